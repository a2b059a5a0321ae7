package argtag_test

import (
	"reflect"
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
