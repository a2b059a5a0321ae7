package argtag_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/shadows-go/shadows/internal/argtag"
)

type item struct{ SKU string }

type order struct {
	CustomerID string          `json:"customer_id" shadows:"logged"`
	Amount     float64         `json:"amount" shadows:"logged"`
	CardNumber string          `json:"card_number"`
	Items      []item          `json:"items" shadows:"logged,length"`
	Tags       map[string]bool `json:"tags" shadows:"length"`
	Note       string          `json:"note" shadows:"length"`
	Region     string          `shadows:"required"`
	Skipped    string          `json:"-" shadows:"logged"`
	private    string
}

func TestFormat(t *testing.T) {
	l, err := argtag.Parse(reflect.TypeFor[order]())
	require.NoError(t, err)
	o := order{
		CustomerID: "12345", Amount: 500, CardNumber: "4111", Items: make([]item, 3),
		Tags: map[string]bool{"a": true}, Note: "hello", Region: "eu", private: "x",
	}
	require.Equal(t,
		`customer_id="12345", amount=500, card_number=..., items=[len 3], tags={len 1}, note=[len 5], Region=...`,
		l.Format(o))
	require.Equal(t, l.Format(o), l.Format(&o))
	require.Equal(t, []string{"Region"}, l.Required())
}

func TestParseErrors(t *testing.T) {
	type bad struct {
		X int `json:"x" shadows:"logged,secret"`
	}
	_, err := argtag.Parse(reflect.TypeFor[bad]())
	require.ErrorContains(t, err, `unknown shadows tag option "secret"`)
}

func TestNonStruct(t *testing.T) {
	l, err := argtag.Parse(reflect.TypeFor[[]int]())
	require.NoError(t, err)
	require.Empty(t, l.Format([]int{1}))
	require.Empty(t, l.Required())
}

type base struct {
	Tenant string `json:"tenant" shadows:"logged"`
	Shadow string `json:"n"` // hidden by the outer n
}

type Base2 struct {
	Deep int `json:"deep"`
}

type withEmbedded struct {
	base
	*Base2
	N     int    `json:"n" shadows:"logged"`
	Empty string `json:"empty,omitempty"`
	Named base   `json:"named"`
}

func TestEmbeddedFieldsAreTheTypesOwn(t *testing.T) {
	l, err := argtag.Parse(reflect.TypeFor[withEmbedded]())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(l.Fields(), ","), "n,empty,named,tenant,deep"; got != want {
		t.Errorf("Fields() = %s, want %s", got, want)
	}
	if got, want := l.Format(withEmbedded{base: base{Tenant: "acme"}, N: 3}), `n=3, empty=..., named=..., tenant="acme", deep=<nil>`; got != want {
		t.Errorf("Format = %s, want %s", got, want)
	}
	if got, ok := l.Omitted("empty"); !ok || string(got) != `""` {
		t.Errorf(`Omitted(empty) = %s, %v; want ""`, got, ok)
	}
	for _, name := range []string{"n", "deep", "named", "missing"} {
		if got, ok := l.Omitted(name); ok {
			t.Errorf("Omitted(%s) = %s: not an omitempty field", name, got)
		}
	}
}
