package message

import (
	"reflect"
	"testing"
)

// twoPassDecode is Decode as it was before the one-pass fast path: a
// lenient decode, then the field names listed from a second parse.
func twoPassDecode(data []byte) (*Message, error) {
	m, err := decode(data, false)
	if err != nil {
		return nil, err
	}
	m.Unknown = unknownFields(data)
	return m, nil
}

// FuzzDecodeOnePass holds Decode to the two-pass decode: the same message,
// the same unknown fields, the same error, whichever path it took.
func FuzzDecodeOnePass(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","account":"alerts","to":["a@b.com"],"subject":"s","text":"t"}`,
		`{"account":"a","to":["a@b.com"],"subjet":"s","X-Team":1}`,
		`{"account":"a","attachments":[{"filename":"a.txt","content":"eA==","inline":true}]}`,
		`{"ACCOUNT":"a","Subject":"s","\u017fubject":"long s","\u212a":"kelvin"}`,
		`{"account":"a"} {"account":"b"}`,
		`{"account":"a","to":"not a list","zz":1}`,
		`{"account":"a","account":"b"}`,
		`[1,2]`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, gerr := Decode(data)
		want, werr := twoPassDecode(data)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("Decode error %v, two passes %v", gerr, werr)
		}
		if gerr != nil {
			if gerr.Error() != werr.Error() {
				t.Fatalf("Decode error %q, two passes %q", gerr, werr)
			}
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Decode\n%+v\ntwo passes\n%+v", got, want)
		}
	})
}
