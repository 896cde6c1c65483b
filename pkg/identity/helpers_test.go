package identity_test

import "encoding/base64"

func rawURL(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
