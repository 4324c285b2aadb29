package bench

// Children: the bench re-executes its own binary (Config.Exe, default
// os.Executable) for the sink (`relay bench-child sink`), the ceiling
// client (`relay bench-child ceiling`) and the relay (`relay serve`).
// Every child is started under the bench's context (cancelled, it is
// killed), is asked to die with the bench (Pdeathsig on Linux), and is
// stopped and waited for on every way out of the line that started it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a child gets to stop after SIGTERM (or, for the
// sink, after its stdin closes) before it is killed.
const stopGrace = 10 * time.Second

// child is one running child process.
type child struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser // nil unless asked for
	out   *bufio.Reader  // its stdout
	logs  *logTail       // its stderr (the last lines, and a hook per line)
	done  chan struct{}  // closed once Wait returned
	err   error          // Wait's error, after done
}

// startChild starts the binary with args. stdin: give the child a pipe
// for its standard input; onLine, if set, sees every stderr line.
func (e *env) startChild(ctx context.Context, name string, args []string, stdin bool, onLine func([]byte)) (*child, error) {
	exe := e.cfg.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("%s: the bench's own binary: %w", name, err)
		}
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = childEnv(os.Environ())
	cmd.SysProcAttr = sysProcAttr()
	cmd.WaitDelay = stopGrace
	c := &child{name: name, cmd: cmd, logs: &logTail{onLine: onLine}, done: make(chan struct{})}
	cmd.Stderr = c.logs
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.out = bufio.NewReader(out)
	if stdin {
		if c.stdin, err = cmd.StdinPipe(); err != nil {
			return nil, err
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	e.children = append(e.children, c)
	if e.cfg.OnChild != nil {
		e.cfg.OnChild(cmd.Process.Pid)
	}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// childEnv is the bench's environment for a child, without the RELAY_
// variables (relay serve would take them as flags: a RELAY_NATS_URL in
// the bench's shell must not point the bench's relay elsewhere), and with
// ChildEnv set.
func childEnv(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "RELAY_") && !strings.HasPrefix(kv, ChildEnv+"=") {
			out = append(out, kv)
		}
	}
	return append(out, ChildEnv+"=1")
}

// pid is the child's process ID.
func (c *child) pid() int { return c.cmd.Process.Pid }

// readLine decodes the child's next stdout line into v; a child that ends
// first, or ctx, is an error naming the child's last log lines.
func (c *child) readLine(ctx context.Context, v any) error {
	type line struct {
		b   []byte
		err error
	}
	ch := make(chan line, 1)
	go func() {
		b, err := c.out.ReadBytes('\n')
		ch <- line{b, err}
	}()
	select {
	case l := <-ch:
		if l.err != nil {
			<-c.done
			return c.failed(fmt.Errorf("no answer: %w", l.err))
		}
		if err := json.Unmarshal(l.b, v); err != nil {
			return fmt.Errorf("%s: %q: %w", c.name, l.b, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", c.name, ctx.Err())
	}
}

// failed wraps err with how the child ended (or that it still runs) and
// its last log lines. c.err is read only once done is closed: the
// goroutine that waits for the child writes it before closing done.
func (c *child) failed(err error) error {
	exit := "still running"
	select {
	case <-c.done:
		exit = fmt.Sprint(c.err)
	default:
	}
	return fmt.Errorf("%s: %w (exit: %s)\n%s", c.name, err, exit, c.logs.tail())
}

// send writes v as a JSON line to the child's stdin. A write that fails
// because ctx ended (and took the child with it) is ctx's error, as
// readLine's is; otherwise it waits for the child to end and names how.
func (c *child) send(ctx context.Context, v any) error {
	err := json.NewEncoder(c.stdin).Encode(v)
	if err == nil {
		return nil
	}
	select {
	case <-c.done:
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", c.name, ctx.Err())
	}
	return c.failed(err)
}

// wait waits for the child to exit by itself.
func (c *child) wait(ctx context.Context) error {
	select {
	case <-c.done:
		if c.err != nil {
			return c.failed(c.err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", c.name, ctx.Err())
	}
}

// stop asks the child to stop (closing its stdin, and SIGTERM), waits
// stopGrace, then kills it; it returns once the child was waited for.
func (c *child) stop() { c.stopWithin(stopGrace) }

// stopWithin is stop with another grace.
func (c *child) stopWithin(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	if c.stdin != nil {
		_ = c.stdin.Close()
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// logTail keeps a child's last stderr lines for error messages and shows
// each line to a hook.
type logTail struct {
	mu     sync.Mutex
	onLine func([]byte)
	part   []byte
	lines  []string
}

const tailLines = 20

func (l *logTail) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := l.part[:i]
		if l.onLine != nil {
			l.onLine(line)
		}
		l.lines = append(l.lines, string(line))
		if len(l.lines) > tailLines {
			l.lines = l.lines[1:]
		}
		l.part = l.part[i+1:]
	}
	if len(l.part) > 64<<10 { // a line without end: keep memory bounded
		l.part = l.part[:0]
	}
	return len(p), nil
}

func (l *logTail) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(append(l.lines, string(l.part)), "\n")
}

// clockTicks is Linux's USER_HZ, the unit of /proc/<pid>/stat's times
// (100 on every architecture Go supports on Linux).
const clockTicks = 100

// procCPU is a running process's user plus system CPU time, from
// /proc/<pid>/stat (fields 14 and 15, after the command name).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("/proc/pid/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, errors.New("/proc/pid/stat: too few fields")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// procPeakRSSMB is a running process's peak resident set (VmHWM in
// /proc/<pid>/status), in MiB.
func procPeakRSSMB(pid int) (float64, error) { return procStatusMB(pid, "VmHWM") }

// procRSSMB is a running process's resident set now (VmRSS), in MiB.
func procRSSMB(pid int) (float64, error) { return procStatusMB(pid, "VmRSS") }

// procStatusMB reads a kB field of /proc/<pid>/status, in MiB.
func procStatusMB(pid int, field string) (float64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", field, err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/pid/status: no %s", field)
}
