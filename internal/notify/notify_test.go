package notify

import "testing"

func TestParseCancel(t *testing.T) {
	for _, tc := range []struct {
		payload string
		want    CancelPayload
		ok      bool
	}{
		{`{"queue":"q","key":"k","generation":3,"started":1764270000123456}`,
			CancelPayload{Queue: "q", Key: "k", Generation: 3, Started: 1764270000123456}, true},
		{`{"queue":"q","key":"k","generation":3}`, CancelPayload{Queue: "q", Key: "k", Generation: 3}, true},
		{`{"queue":"q","key":"k"}`, CancelPayload{Queue: "q", Key: "k"}, true}, // every run of k
		// A scheduled row's cancel: no run of its own, older runs stop.
		{`{"queue":"q","key":"k","generation":2,"started":null,"below":3}`,
			CancelPayload{Queue: "q", Key: "k", Generation: 2, Below: 3}, true},
		{`{"queue":"q"}`, CancelPayload{}, false},
		{`not json`, CancelPayload{}, false},
	} {
		got, ok := ParseCancel(tc.payload)
		if got != tc.want || ok != tc.ok {
			t.Errorf("ParseCancel(%s) = %+v, %v; want %+v, %v", tc.payload, got, ok, tc.want, tc.ok)
		}
	}
}
