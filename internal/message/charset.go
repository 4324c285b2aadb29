package message

import (
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"

	"golang.org/x/text/encoding/ianaindex"
)

// Encoded-words (RFC 2047 §2) may name any charset registered with IANA
// (RFC 2978), and mail from Windows tools, NAS boxes and older scripts
// names the one of its system: windows-1252, iso-8859-15, koi8-r,
// shift_jis, iso-2022-jp. net/mail alone decodes UTF-8, US-ASCII and
// ISO-8859-1 only and fails the whole address on any other, which made
// such a message invalid although its addresses were fine. Addresses
// are read with a decoder that knows IANA's MIME names.

var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{CharsetReader: charsetReader}}

// charsetReader turns input in charset into UTF-8 (mime.WordDecoder's
// CharsetReader, called for charsets other than UTF-8, US-ASCII and
// ISO-8859-1).
func charsetReader(charset string, input io.Reader) (io.Reader, error) {
	enc, err := ianaindex.MIME.Encoding(strings.ToLower(charset))
	if err != nil || enc == nil {
		return nil, fmt.Errorf("unhandled charset %q", charset)
	}
	return enc.NewDecoder().Reader(input), nil
}

// ReadAddress parses one address (mail.ParseAddress) whatever the charset
// of its encoded display name, and by no other rule of this package: the
// worker's raw fields, and the SMTP front door's From.
func ReadAddress(s string) (*mail.Address, error) { return addressParser.Parse(s) }

// ReadAddressList parses an address list (mail.ParseAddressList) whatever
// the charsets of its encoded display names (relay sendmail's To, Cc, Bcc
// and -f too).
func ReadAddressList(s string) ([]*mail.Address, error) { return addressParser.ParseList(s) }
