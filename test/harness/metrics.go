package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Metrics is a scraped Prometheus text page: one Sample per line.
type Metrics []Sample

// Sample is one time series value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Scrape fetches and parses a Prometheus text page.
func Scrape(ctx context.Context, url string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", url, resp.Status)
	}
	return ParseMetrics(resp.Body)
}

// ParseMetrics reads the Prometheus text format (the subset client_golang
// writes: no timestamps, no escaped quotes in label values that matter
// here).
func ParseMetrics(r io.Reader) (Metrics, error) {
	var out Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s := Sample{Name: line[:i], Value: v, Labels: map[string]string{}}
		if j := strings.IndexByte(s.Name, '{'); j >= 0 {
			for kv := range strings.SplitSeq(strings.TrimSuffix(s.Name[j+1:], "}"), ",") {
				k, val, ok := strings.Cut(kv, "=")
				if ok {
					s.Labels[k] = strings.Trim(val, `"`)
				}
			}
			s.Name = s.Name[:j]
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// Sum adds the values of the series named name whose labels include all
// of match (nil matches every series).
func (m Metrics) Sum(name string, match map[string]string) float64 {
	total := 0.0
next:
	for _, s := range m {
		if s.Name != name {
			continue
		}
		for k, v := range match {
			if s.Labels[k] != v {
				continue next
			}
		}
		total += s.Value
	}
	return total
}

// Has reports whether a series named name exists.
func (m Metrics) Has(name string) bool {
	for _, s := range m {
		if s.Name == name {
			return true
		}
	}
	return false
}
