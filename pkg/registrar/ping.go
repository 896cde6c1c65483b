package registrar

import (
	"context"
	"errors"
	"net/http"
	"net/url"
)

// Ping checks that the registrar answers: it asks for twin 0, which no
// registrar holds, bypassing the cache. An answer in the 4xx range (404,
// 400) means it is up; a network error or a 5xx is returned. The relay's
// status page calls it to show the registrar's health.
func (c *Client) Ping(ctx context.Context) error {
	var a accountJSON
	err := c.do(ctx, http.MethodGet, "/v1/accounts", url.Values{"twin_id": {"0"}}, nil, nil, http.StatusOK, &a)
	var se *StatusError
	if err == nil || (errors.As(err, &se) && se.StatusCode >= 400 && se.StatusCode < 500) {
		return nil
	}
	return err
}
