package oidclogin

import (
	"encoding/json"
	"strconv"
	"strings"
)

// claims are the standard claims read from the ID token and userinfo.
type claims struct {
	Email             string    `json:"email"`
	EmailVerified     flexBool  `json:"email_verified"`
	PreferredUsername string    `json:"preferred_username"`
	Name              string    `json:"name"`
	Picture           string    `json:"picture"`
	Groups            flexGroup `json:"groups"`
}

// merge fills c with what more has: userinfo is the fuller source where a
// provider puts less in the ID token.
func (c *claims) merge(more claims) {
	if more.Email != "" {
		c.Email, c.EmailVerified = more.Email, more.EmailVerified
	}
	if more.PreferredUsername != "" {
		c.PreferredUsername = more.PreferredUsername
	}
	if more.Name != "" {
		c.Name = more.Name
	}
	if more.Picture != "" {
		c.Picture = more.Picture
	}
	if len(more.Groups) > 0 {
		c.Groups = more.Groups
	}
}

// flexBool reads a boolean some providers send as a string ("true").
type flexBool bool

// UnmarshalJSON accepts true, false, "true" and "false".
func (b *flexBool) UnmarshalJSON(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	switch t := v.(type) {
	case bool:
		*b = flexBool(t)
	case string:
		p, _ := strconv.ParseBool(strings.TrimSpace(t))
		*b = flexBool(p)
	}
	return nil
}

// flexGroup reads the groups claim as a list of strings, also when a
// provider sends one group as a plain string.
type flexGroup []string

// UnmarshalJSON accepts a list of strings or one string.
func (g *flexGroup) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		if one != "" {
			*g = flexGroup{one}
		}
		return nil
	}
	var many []any
	if err := json.Unmarshal(data, &many); err != nil {
		return nil // not a groups claim this server understands: none
	}
	out := make(flexGroup, 0, len(many))
	for _, v := range many {
		if s, ok := v.(string); ok && s != "" {
			out = append(out, s)
		}
	}
	*g = out
	return nil
}
