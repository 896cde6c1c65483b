package redisapi

import (
	"errors"
	"testing"
)

func TestDecodeTopicRequest(t *testing.T) {
	for _, ok := range []string{
		`{"ver":1,"op":"publish","topic":"a/b","dat":"aGk=","exp":10}`,
		`{"ver":1,"op":"subscribe","twin":5,"topic":"a/#","queue":"q","level":"confirmed","lease":30}`,
		`{"ver":1,"op":"unsubscribe","twin":5,"topic":"a/#","queue":"q"}`,
	} {
		if _, err := DecodeTopicRequest([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, c := range []struct {
		in   string
		want error
	}{
		{`not json`, ErrBadJSON},
		{`{"ver":2,"op":"publish","topic":"a"}`, ErrBadMessage},
		{`{"ver":1,"op":"publish","topic":"a","dat":"%%"}`, ErrBadMessage},
		{`{"ver":1,"op":"publish","topic":"a","exp":-1}`, ErrBadMessage},
		{`{"ver":1,"op":"publish","topic":""}`, ErrBadMessage},
		{`{"ver":1,"op":"subscribe","topic":"a","queue":"q"}`, ErrBadMessage},
		{`{"ver":1,"op":"subscribe","twin":5,"topic":"a"}`, ErrBadMessage},
		{`{"ver":1,"op":"subscribe","twin":5,"topic":"a","queue":"q","level":"most"}`, ErrBadMessage},
		{`{"ver":1,"op":"subscribe","twin":5,"topic":"a","queue":"q","lease":-5}`, ErrBadMessage},
		{`{"ver":1,"op":"drop","topic":"a"}`, ErrBadMessage},
	} {
		if _, err := DecodeTopicRequest([]byte(c.in)); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.in, err, c.want)
		}
	}
}
