package main

import (
	"reflect"
	"strings"
	"time"
	"unicode"
)

// benchJSON turns a result of the load tool into what rmb bench --json
// prints: keys in snake_case (PerSecond → per_second, RSSPerSession →
// rss_per_session) and every time.Duration as a number of microseconds
// (float) under its key with "_us" appended (Latency.P50 → latency.p50_us,
// a map of durations → by_command_us). Fields tagged omitempty and zero
// are left out, as encoding/json would.
func benchJSON(v any) any { return jsonValue(reflect.ValueOf(v)) }

var durationType = reflect.TypeFor[time.Duration]()

func jsonValue(v reflect.Value) any {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Type() == durationType {
		return float64(v.Int()) / float64(time.Microsecond)
	}
	switch v.Kind() {
	case reflect.Struct:
		out := map[string]any{}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			if !f.IsExported() || (strings.Contains(f.Tag.Get("json"), "omitempty") && v.Field(i).IsZero()) {
				continue
			}
			out[jsonKey(f.Name, f.Type)] = jsonValue(v.Field(i))
		}
		return out
	case reflect.Map:
		out := make(map[string]any, v.Len())
		for it := v.MapRange(); it.Next(); {
			out[it.Key().String()] = jsonValue(it.Value())
		}
		return out
	}
	return v.Interface()
}

// jsonKey is name in snake_case, with "_us" when t holds durations.
func jsonKey(name string, t reflect.Type) string {
	k := snake(name)
	if t == durationType || t.Kind() == reflect.Map && t.Elem() == durationType {
		k += "_us"
	}
	return k
}

// snake splits a Go name before each upper-case letter that starts a
// word: after a lower-case letter or digit, or before the last capital of
// an acronym followed by lower case (RSSPerSession → rss_per_session).
func snake(name string) string {
	r := []rune(name)
	var b strings.Builder
	for i, c := range r {
		if i > 0 && unicode.IsUpper(c) {
			prev := r[i-1]
			nextLower := i+1 < len(r) && unicode.IsLower(r[i+1])
			if unicode.IsLower(prev) || unicode.IsDigit(prev) || unicode.IsUpper(prev) && nextLower {
				b.WriteByte('_')
			}
		}
		b.WriteRune(unicode.ToLower(c))
	}
	return b.String()
}
