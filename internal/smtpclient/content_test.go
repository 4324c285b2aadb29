package smtpclient

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// failingReader gives its text, then err.
type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

// A content that fails half-way (a body store that stops answering, a
// digest that no longer matches) must never be ended with the lone dot:
// the server would deliver the half it got.
func TestContentReadErrorNeverEndsTheMessage(t *testing.T) {
	gone := errors.New("body store: object gone")
	for _, tc := range []struct {
		name    string
		content Content
		want    string
	}{
		{"reader fails", Content{Size: 1000, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(&failingReader{r: strings.NewReader("Subject: x\r\n\r\nhalf"), err: gone}), nil
		}}, "object gone"},
		{"shorter than announced", Content{Size: 1000, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nshort\r\n")), nil
		}}, "content ended after"},
		{"longer than announced", Content{Size: 5, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("Subject: x\r\n\r\nlong\r\n")), nil
		}}, "content longer than"},
		{"cannot open", Content{Size: 5, Open: func() (io.ReadCloser, error) { return nil, gone }}, "object gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var after []string
			c, err, wait := serve(t, Config{}, func(p *peer) {
				if !p.handshake("PIPELINING") {
					return
				}
				p.skip(3)
				p.send("250 2.1.0 OK", "250 2.1.5 OK", "354 go ahead")
				after = p.rest()
			})
			if err != nil {
				t.Fatal(err)
			}
			err = c.SendContent(context.Background(), "a@fake.test", []string{"b@fake.test"}, tc.content)
			var ce *ContentError
			var e *Error
			if !errors.As(err, &ce) || !errors.As(err, &e) || e.Command != "message" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a *ContentError at the message stage saying %q", err, tc.want)
			}
			wait()
			if slices.Contains(after, ".") {
				t.Errorf("the content was ended with a lone dot after the read failed: %q", after)
			}
			if !c.Broken() {
				t.Error("the connection is not marked broken")
			}
		})
	}
}

func TestContentStreamsWithSizeAndBody(t *testing.T) {
	var mailLine, got string
	c, err, wait := serve(t, Config{}, func(p *peer) {
		if !p.handshake("PIPELINING", "8BITMIME") {
			return
		}
		mailLine = p.expect("MAIL ")
		p.skip(2)
		p.send("250 2.1.0 OK", "250 2.1.5 OK", "354 go ahead")
		got, _ = p.content()
		p.send("250 2.0.0 OK queued")
	})
	if err != nil {
		t.Fatal(err)
	}
	opens := 0
	text := "Subject: x\r\n\r\n.dot\r\nr\xc3\xa9sum\xc3\xa9\r\n"
	content := Content{Size: int64(len(text)), EightBit: true, Open: func() (io.ReadCloser, error) {
		opens++
		return io.NopCloser(strings.NewReader(text)), nil
	}}
	if err := c.SendContent(context.Background(), "a@fake.test", []string{"b@fake.test"}, content); err != nil {
		t.Fatal(err)
	}
	wait()
	if want := "MAIL FROM:<a@fake.test> SIZE=" + itoa(len(text)) + " BODY=8BITMIME"; mailLine != want {
		t.Errorf("MAIL line %q, want %q", mailLine, want)
	}
	if want := "Subject: x\n\n..dot\nr\xc3\xa9sum\xc3\xa9\n"; got != want {
		t.Errorf("content %q, want %q (dot-stuffed)", got, want)
	}
	if opens != 1 {
		t.Errorf("content opened %d times, want 1", opens)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
