package relaycmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"relay365/internal/cli"
	"relay365/internal/message"
	"relay365/internal/termsafe"
)

// The spool of relay sendmail (docs/design.md §10): when NATS cannot take
// a message now (exit 75), it is kept as a file in a local directory, as
// Postfix keeps it in its maildrop and nullmailer in its queue, instead
// of being lost by callers that never retry (cron, smartd, mdadm). A
// later relay sendmail, or "relay sendmail -q", publishes it with its
// original id.

// defaultSpool is --spool's default. The spool is used only when this
// directory exists: the operator makes it (install -d -m 1733 DIR).
const defaultSpool = "/var/spool/relay365"

// spoolSuffix ends the name of a spooled message, failedSuffix that of
// one that can never be sent; a name starting with "." is a file being
// written.
const (
	spoolSuffix  = ".msg"
	failedSuffix = ".failed"
	tempPrefix   = ".tmp-"
)

// staleTemp is the age past which a temporary spool file is a leftover
// of a relay sendmail that died while writing it: -q removes it. No
// write takes this long (--timeout bounds the publish before it).
const staleTemp = time.Hour

// maxSpoolFile is the largest spool file read: a 35 MB message in base64
// inside JSON, with room to spare.
const maxSpoolFile = 64 << 20

// spoolFile is the JSON of one spooled message. Account is the account it
// goes through, also in Message; Message keeps its id, which becomes the
// Nats-Msg-Id when the spool is flushed.
type spoolFile struct {
	Account string           `json:"account"`
	Message *message.Message `json:"message"`
}

// spoolDir says whether the spool is in use: dir is set and names an
// existing directory. Otherwise why says how to make it so ("" when the
// spool is off).
func spoolDir(dir string) (ok bool, why string) {
	if dir == "" {
		return false, ""
	}
	fi, err := os.Stat(dir)
	switch {
	case err == nil && fi.IsDir() && fi.Mode().Perm()&0o002 != 0 && fi.Mode()&fs.ModeSticky == 0:
		// Writable by every user without the sticky bit, any of them
		// may remove or replace the mail kept there (the sticky bit
		// lets only a file's owner and root do so): keep nothing in it.
		return false, fmt.Sprintf("the spool %s is writable by every user without the sticky bit, so any of them could remove the mail kept there: chmod 1733 %s (--spool, RELAY_SENDMAIL_SPOOL)", dir, dir)
	case err == nil && fi.IsDir():
		return true, ""
	case err == nil:
		return false, fmt.Sprintf("--spool %s is not a directory", dir)
	case errors.Is(err, fs.ErrNotExist):
		return false, fmt.Sprintf("the spool %s does not exist; to keep such mail until NATS is back, create it: install -d -m 1733 %s (--spool, RELAY_SENDMAIL_SPOOL)", dir, dir)
	}
	return false, fmt.Sprintf("the spool is not usable: %v (--spool, RELAY_SENDMAIL_SPOOL)", err)
}

// spoolNotDir is the usage error of a --spool that names something other
// than a directory (found at start, and again by -q if it changed since).
func spoolNotDir(dir string) error {
	return cli.Usagef("--spool %s: not a directory (want the spool directory, or off)", dir)
}

// keepInSpool is what runSendmail does with a message NATS could not take
// now (notQueued, exit 75): write it to the spool and report success, as
// sendmail(8) does once a message is in its queue. Without a spool, or
// when writing it fails, the caller gets 75 and both reasons.
func keepInSpool(c sendmailConfig, m *message.Message, notQueued error) error {
	ok, why := spoolDir(c.Spool)
	if !ok {
		if why != "" {
			notQueued = fmt.Errorf("%w; %s", notQueued, why)
		}
		return cli.ExitError{Code: exTempFail, Err: notQueued}
	}
	if err := writeSpool(c.Spool, m); err != nil {
		return cli.ExitError{Code: exTempFail, Err: fmt.Errorf("%w; and not kept in the spool: %v", notQueued, err)}
	}
	return nil
}

// writeSpool writes m to dir as <id>.msg so that it survives a crash once
// writeSpool returns nil: a temporary file of mode 0600 (in a sticky
// directory, only its owner and root may read or remove it), written and
// synced, renamed to its name, and the directory synced so that the name
// is on disk too (or, for a user who may not open the directory, its
// file system). On an error nothing is left behind.
func writeSpool(dir string, m *message.Message) (err error) {
	if err := message.CheckID(m.ID); err != nil || strings.ContainsAny(m.ID, `/\`) || strings.HasPrefix(m.ID, ".") {
		return fmt.Errorf("message id %q cannot name a file", m.ID)
	}
	data, err := json.Marshal(spoolFile{Account: m.Account, Message: m})
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, tempPrefix+"*") // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	name := filepath.Join(dir, m.ID+spoolSuffix)
	renamed := false
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			if renamed {
				// Its name may not be on disk: do not leave a message the
				// caller was told is not kept, to be sent after a retry.
				os.Remove(name)
			}
		}
	}()
	if err = f.Chmod(0o600); err != nil { // whatever the umask
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = os.Rename(tmp, name); err != nil {
		return err
	}
	renamed = true
	if err = syncDir(dir); errors.Is(err, fs.ErrPermission) {
		// A user who may write into the spool but not read it (mode
		// 1733: everyone but its owner and root, cron's users) cannot
		// open the directory to sync it: sync the file system that
		// holds the file, which makes its name durable too.
		if fsErr := syncFS(f); fsErr == nil {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	return f.Close()
}

// syncDir makes the names in dir (a rename, a removal) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// errSkip is a spool file this process may not read, or one gone.
var errSkip = errors.New("skipped")

// listSpool returns the names of the spooled messages in dir, oldest
// first (by modification time: the time it was spooled). It removes the
// temporary files older than staleTemp that it may remove.
func listSpool(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tempPrefix) && e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTemp {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	type entry struct {
		name string
		mod  time.Time
	}
	var list []entry
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, spoolSuffix) || !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // gone: another flusher took it
		}
		list = append(list, entry{name, fi.ModTime()})
	}
	slices.SortFunc(list, func(a, b entry) int {
		if c := a.mod.Compare(b.mod); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
	names := make([]string, len(list))
	for i, e := range list {
		names[i] = e.name
	}
	return names, nil
}

// readSpool reads one spooled message. errSkip means another user's file
// (mode 0600), one gone, or anything but a regular file; any other error
// (a file with more than one name included) means the file can never be
// sent. account is what the file names, when
// it names one.
func readSpool(path string) (m *message.Message, account string, err error) {
	// Not through a symbolic link, nor blocking on a FIFO: in a directory
	// every user may write to, a name is only a name.
	f, err := os.OpenFile(path, os.O_RDONLY|openNoFollow, 0)
	if err != nil {
		return nil, "", errSkip
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, "", errSkip
	}
	// relay sendmail writes each file under one name (a temporary file
	// renamed). A second name is a hard link someone planted, maybe to
	// a file they may not read (where the kernel lets users link such
	// files: BSD, macOS, Linux without fs.protected_hardlinks): root
	// would read it and send it, or quote it in the report. Not read;
	// renamed .failed (only this name) for the operator to see.
	if n := linkCount(fi); n > 1 {
		return nil, "", fmt.Errorf("the file has %d links, not the one name relay sendmail gives it: not read (a hard link planted in the spool?)", n)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSpoolFile+1))
	if err != nil {
		return nil, "", errSkip
	}
	if len(data) > maxSpoolFile {
		return nil, "", fmt.Errorf("larger than %d bytes: not a spooled message", maxSpoolFile)
	}
	var sf spoolFile
	if err := json.Unmarshal(data, &sf); err != nil {
		return nil, "", fmt.Errorf("not a spooled message: %v", err)
	}
	switch {
	case sf.Message == nil:
		return nil, sf.Account, errors.New("not a spooled message: no message")
	case sf.Message.ID == "":
		// A fresh id on every flush would defeat the dedupe.
		return nil, sf.Account, errors.New("the spooled message has no id")
	case sf.Message.Account == "":
		sf.Message.Account = sf.Account
	case sf.Message.Account != sf.Account:
		return nil, sf.Account, fmt.Errorf("the file names account %q, its message %q", sf.Account, sf.Message.Account)
	}
	return sf.Message, sf.Account, nil
}

// flushSpool publishes the spooled messages names in dir, in order, with
// their own ids: the id is the Nats-Msg-Id, so JetStream's duplicate
// window absorbs a crash between the publish and the removal, and two
// flushers at once. perMessage, when not 0, bounds each publish;
// otherwise ctx bounds them all.
//
// A message queued is removed. A temporary failure (75) stops the flush,
// the rest left for later, and is returned. A message that can never be
// sent as it is (65, 77) is renamed <name>.failed, with a line on stderr,
// and the flush goes on; the error returned then carries 77 if any was
// refused, else 65. Files this process may not read are skipped.
func flushSpool(ctx context.Context, sc *sendmailConn, dir string, names []string, perMessage time.Duration, stderr io.Writer) error {
	var failed, refusedN int
	for i, name := range names {
		path := filepath.Join(dir, name)
		m, account, err := readSpool(path)
		if errors.Is(err, errSkip) {
			continue
		}
		if err == nil {
			pctx, cancel := ctx, context.CancelFunc(func() {})
			if perMessage > 0 {
				pctx, cancel = context.WithTimeout(ctx, perMessage)
			}
			err = sc.publish(pctx, m)
			cancel()
			if err == nil {
				if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
					report(stderr, "%s: queued, but not removed from the spool (sent again inside the duplicate window, it is dropped as a duplicate): %v", path, err)
				}
				syncDir(dir)
				continue
			}
		} else {
			err = cli.ExitError{Code: exDataErr, Err: err}
		}
		var ee cli.ExitError
		if !errors.As(err, &ee) || (ee.Code != exDataErr && ee.Code != exNoPerm) {
			return fmt.Errorf("spool %s: %d message(s) left for later: %w", dir, len(names)-i, err)
		}
		failed++
		if ee.Code == exNoPerm {
			refusedN++
		}
		where := "kept as " + name + failedSuffix
		if rerr := os.Rename(path, path+failedSuffix); rerr != nil {
			where = fmt.Sprintf("left as it is: %v", rerr)
		} else {
			syncDir(dir)
		}
		report(stderr, "%s (account %q): %v; %s", path, account, err, where)
	}
	switch {
	case refusedN > 0:
		return cli.ExitError{Code: exNoPerm, Err: fmt.Errorf("spool %s: %d message(s) could not be sent (%d refused by NATS), kept as *%s", dir, failed, refusedN, failedSuffix)}
	case failed > 0:
		return cli.ExitError{Code: exDataErr, Err: fmt.Errorf("spool %s: %d message(s) could not be sent, kept as *%s", dir, failed, failedSuffix)}
	}
	return nil
}

// report writes one line about a spool file on stderr. The file's name
// is any user's choice (the spool is writable by all), and so is what
// the reason quotes of its content: control characters, a newline
// included, are escaped, so that a planted name can neither drive
// root's terminal nor forge lines of the report cron mails.
func report(stderr io.Writer, format string, args ...any) {
	fmt.Fprintf(stderr, "relay sendmail: %s\n", termsafe.Line(fmt.Sprintf(format, args...)))
}

// runQueue is "relay sendmail -q": sendmail(8)'s and Postfix sendmail(1)'s
// -q, "process the queue" (once: an interval, -q1h, is a daemon's, which
// relay sendmail is not). It reads no message and needs no --account:
// each file names its account. A missing spool holds nothing.
func runQueue(ctx context.Context, c sendmailConfig, env Env) error {
	// Only a spool that does not exist holds nothing. One that cannot be
	// looked at (a parent this user may not search, a stale mount, a
	// symbolic link loop) may hold mail: exit 0 would tell cron, every
	// minute, that it was sent.
	fi, err := os.Stat(c.Spool)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err == nil && !fi.IsDir():
		return cli.ExitError{Code: exUsage, Err: spoolNotDir(c.Spool)}
	}
	var names []string
	if err == nil {
		names, err = listSpool(c.Spool)
	}
	if err != nil {
		code := exSoftware
		if errors.Is(err, fs.ErrPermission) {
			code = exNoPerm // a spool of mode 1733: only root may list it
		}
		return cli.ExitError{Code: code, Err: fmt.Errorf("read the spool: %w", err)}
	}
	if len(names) == 0 {
		return nil // no connection to NATS for an empty spool: -q may run every minute
	}
	sc, err := dialSendmail(c)
	if err != nil {
		return fmt.Errorf("spool %s kept: %w", c.Spool, err)
	}
	defer sc.close()
	return flushSpool(ctx, sc, c.Spool, names, c.Timeout, env.Stderr)
}

// drainSpool is the flush after a message was queued (publishSendmail):
// best effort, within timeout, its failures no concern of the message
// just queued (only messages renamed .failed are reported, on stderr). So
// a host whose mail is all one user's (root's cron) drains by itself.
func drainSpool(ctx context.Context, sc *sendmailConn, dir string, timeout time.Duration, stderr io.Writer) {
	if ok, _ := spoolDir(dir); !ok {
		return
	}
	names, err := listSpool(dir)
	if err != nil || len(names) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	flushSpool(ctx, sc, dir, names, 0, stderr)
}
