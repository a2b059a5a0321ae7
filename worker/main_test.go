package worker_test

import (
	"testing"

	"github.com/shadows-go/shadows/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
