// stream-client-go: a CRI streaming client built on moby/spdystream (the SPDY library
// client-go's remotecommand uses), for vmlet's tests. It upgrades the way apimachinery's
// SpdyRoundTripper does, opens the remotecommand streams in client-go's order (error,
// stdin, stdout, stderr, resize), sends stdin, reads everything and prints one JSON line.
// -mode attach reads stdout until -expect matches (after writing -send), then detaches;
// -mode portforward opens error+data stream pairs (port, requestID headers) as client-go's
// portforward does, sends -request on each, half-closes, and reads the reply to its end.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/moby/spdystream"
)

type result struct {
	HTTPStatus   int      `json:"httpStatus"`
	Protocol     string   `json:"protocol,omitempty"`
	Accepted     []string `json:"accepted,omitempty"`
	Body         string   `json:"body,omitempty"`
	Stdout       string   `json:"stdout"`
	StdoutLen    int      `json:"stdoutLen"`
	StdoutSha256 string   `json:"stdoutSha256"`
	Stderr       string   `json:"stderr"`
	Status       string   `json:"status"`
	Error        string   `json:"error,omitempty"`
	Matched      bool     `json:"matched,omitempty"`
	// Port-forward: one entry per connection.
	Forwards []forward `json:"forwards,omitempty"`
	// Milliseconds from the upgrade to the end of the work (port-forward: per connection, mean).
	ElapsedMs float64 `json:"elapsedMs"`
}

type forward struct {
	Reply       string  `json:"reply"`
	ReplyLen    int     `json:"replyLen"`
	Error       string  `json:"error"`
	FirstByteMs float64 `json:"firstByteMs"`
}

// bufConn hands the SPDY framer whatever the HTTP reader already buffered.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func main() {
	rawURL := flag.String("url", "", "streaming URL")
	method := flag.String("method", "POST", "HTTP method")
	protocols := flag.String("protocols", "v4.channel.k8s.io,v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io", "X-Stream-Protocol-Version values, each sent as its own header")
	stdin := flag.String("stdin", "", "data for stdin (opens the stdin stream when -open-stdin)")
	openStdin := flag.Bool("open-stdin", false, "open a stdin stream")
	stdinRepeat := flag.Int("stdin-repeat", 1, "send -stdin this many times")
	stdout := flag.Bool("stdout", true, "open a stdout stream")
	stderr := flag.Bool("stderr", false, "open a stderr stream")
	tty := flag.Bool("tty", false, "open a resize stream and send -resize")
	resize := flag.String("resize", "", "terminal sizes to send, e.g. 80x24,100x30")
	mode := flag.String("mode", "exec", "exec, attach or portforward")
	expect := flag.String("expect", "", "attach: detach once stdout matches this regexp")
	send := flag.String("send", "", "attach: write this to stdin once the streams are up")
	waitMs := flag.Int("wait-ms", 30000, "attach: give up on -expect after this long")
	ports := flag.String("port", "80", "portforward: the pod's port, or ports (comma-separated) used in turn")
	request := flag.String("request", "", "portforward: bytes to send on each connection")
	connections := flag.Int("connections", 1, "portforward: connections, one after another, on one session")
	sendBytes := flag.Int("send-bytes", 0, "portforward: also send this many zero bytes after -request")
	addr := flag.String("addr", "", "direct: host:port to dial without vmlet (the baseline)")
	flag.Parse()
	if *mode == "direct" {
		out, _ := json.Marshal(direct(*addr, *request, *connections, *sendBytes))
		fmt.Println(string(out))
		return
	}
	if *mode == "portforward" {
		out, _ := json.Marshal(portForward(*rawURL, *method, strings.Split(*ports, ","), *request, *connections, *sendBytes))
		fmt.Println(string(out))
		return
	}
	if *mode == "attach" {
		out, _ := json.Marshal(attach(*rawURL, *method, strings.Split(*protocols, ","), *openStdin, *send, *stderr, *tty, *expect, time.Duration(*waitMs)*time.Millisecond))
		fmt.Println(string(out))
		return
	}
	started := time.Now()
	res := run(*rawURL, *method, strings.Split(*protocols, ","), *openStdin, *stdin, *stdinRepeat, *stdout, *stderr, *tty, *resize)
	res.ElapsedMs = float64(time.Since(started).Microseconds()) / 1000
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
}

func run(rawURL, method string, protocols []string, openStdin bool, stdin string, repeat int, stdout, stderr, tty bool, resize string) (res result) {
	u, err := url.Parse(rawURL)
	if err != nil {
		res.Error = err.Error()
		return
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		res.Error = err.Error()
		return
	}
	defer conn.Close()
	req, _ := http.NewRequest(method, rawURL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		res.Error = err.Error()
		return
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		res.Error = err.Error()
		return
	}
	res.HTTPStatus = resp.StatusCode
	res.Protocol = resp.Header.Get("X-Stream-Protocol-Version")
	res.Accepted = resp.Header["X-Accepted-Stream-Protocol-Versions"]
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := ioutil.ReadAll(resp.Body)
		res.Body = string(body)
		return
	}
	// httpstream.IsUpgradeResponse
	if !strings.Contains(strings.ToLower(resp.Header.Get("Connection")), "upgrade") ||
		!strings.Contains(strings.ToLower(resp.Header.Get("Upgrade")), "spdy/3.1") {
		res.Error = "not an upgrade response"
		return
	}
	sc, err := spdystream.NewConnection(&bufConn{conn, br}, false)
	if err != nil {
		res.Error = err.Error()
		return
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	defer sc.Close()

	create := func(t string) (*spdystream.Stream, error) {
		h := http.Header{}
		h.Set("streamType", t)
		s, err := sc.CreateStream(h, nil, false)
		if err != nil {
			return nil, err
		}
		// apimachinery waits for the SYN_REPLY of each stream.
		if err := s.WaitTimeout(30 * time.Second); err != nil {
			return nil, fmt.Errorf("stream %s: %v", t, err)
		}
		return s, nil
	}
	errStream, err := create("error")
	if err != nil {
		res.Error = err.Error()
		return
	}
	var streams = map[string]*spdystream.Stream{}
	for _, want := range []struct {
		name string
		on   bool
	}{{"stdin", openStdin}, {"stdout", stdout}, {"stderr", stderr}, {"resize", tty}} {
		if !want.on {
			continue
		}
		s, err := create(want.name)
		if err != nil {
			res.Error = err.Error()
			return
		}
		streams[want.name] = s
	}
	var wg sync.WaitGroup
	var outBuf, errBuf []byte
	if s := streams["stdin"]; s != nil {
		go func() {
			for i := 0; i < repeat; i++ {
				if _, err := s.Write([]byte(stdin)); err != nil {
					return
				}
			}
			s.Close()
		}()
	}
	if s := streams["resize"]; s != nil && resize != "" {
		go func() {
			for _, wh := range strings.Split(resize, ",") {
				var w, h int
				fmt.Sscanf(wh, "%dx%d", &w, &h)
				b, _ := json.Marshal(map[string]int{"Width": w, "Height": h})
				s.Write(b)
			}
			s.Close()
		}()
	}
	for name, dst := range map[string]*[]byte{"stdout": &outBuf, "stderr": &errBuf} {
		s := streams[name]
		if s == nil {
			continue
		}
		wg.Add(1)
		go func(s *spdystream.Stream, dst *[]byte) {
			defer wg.Done()
			*dst, _ = ioutil.ReadAll(s)
		}(s, dst)
	}
	status, err := ioutil.ReadAll(errStream)
	if err != nil && err != io.EOF {
		res.Error = err.Error()
	}
	wg.Wait()
	res.Status = string(status)
	res.StdoutLen = len(outBuf)
	sum := sha256.Sum256(outBuf)
	res.StdoutSha256 = hex.EncodeToString(sum[:])
	if len(outBuf) <= 4096 {
		res.Stdout = string(outBuf)
	}
	res.Stderr = string(errBuf)
	return
}

// upgrade dials, sends the upgrade request and returns the SPDY connection (nil on a
// refusal, with res filled in).
func upgrade(rawURL, method string, protocols []string, res *result) (*spdystream.Connection, net.Conn) {
	u, err := url.Parse(rawURL)
	if err != nil {
		res.Error = err.Error()
		return nil, nil
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		res.Error = err.Error()
		return nil, nil
	}
	req, _ := http.NewRequest(method, rawURL, nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	for _, p := range protocols {
		req.Header.Add("X-Stream-Protocol-Version", p)
	}
	if err := req.Write(conn); err != nil {
		res.Error = err.Error()
		conn.Close()
		return nil, nil
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		res.Error = err.Error()
		conn.Close()
		return nil, nil
	}
	res.HTTPStatus = resp.StatusCode
	res.Protocol = resp.Header.Get("X-Stream-Protocol-Version")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := ioutil.ReadAll(resp.Body)
		res.Body = string(body)
		conn.Close()
		return nil, nil
	}
	sc, err := spdystream.NewConnection(&bufConn{conn, br}, false)
	if err != nil {
		res.Error = err.Error()
		conn.Close()
		return nil, nil
	}
	go sc.Serve(spdystream.NoOpStreamHandler)
	return sc, conn
}

func createStream(sc *spdystream.Connection, h http.Header) (*spdystream.Stream, error) {
	s, err := sc.CreateStream(h, nil, false)
	if err != nil {
		return nil, err
	}
	if err := s.WaitTimeout(30 * time.Second); err != nil {
		return nil, fmt.Errorf("stream %s: %v", h.Get("streamType"), err)
	}
	return s, nil
}

// attach: the remotecommand streams, then read stdout until -expect matches, and detach by
// closing the connection, as kubectl does on Ctrl-P Ctrl-Q or when it is killed.
func attach(rawURL, method string, protocols []string, openStdin bool, send string, stderr, tty bool, expect string, wait time.Duration) (res result) {
	start := time.Now()
	sc, conn := upgrade(rawURL, method, protocols, &res)
	if sc == nil {
		return
	}
	defer conn.Close()
	re := regexp.MustCompile(expect)
	types := []string{"error"}
	if openStdin {
		types = append(types, "stdin")
	}
	types = append(types, "stdout")
	if stderr {
		types = append(types, "stderr")
	}
	if tty {
		types = append(types, "resize")
	}
	streams := map[string]*spdystream.Stream{}
	for _, t := range types {
		h := http.Header{}
		h.Set("streamType", t)
		s, err := createStream(sc, h)
		if err != nil {
			res.Error = err.Error()
			return
		}
		streams[t] = s
	}
	var mu sync.Mutex
	var out []byte
	matched := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		buf := make([]byte, 32*1024)
		once := false
		for {
			n, err := streams["stdout"].Read(buf)
			mu.Lock()
			out = append(out, buf[:n]...)
			if !once && expect != "" && re.Match(out) {
				once = true
				close(matched)
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	statusRead := make(chan struct{})
	go func() {
		defer close(statusRead)
		st, _ := ioutil.ReadAll(streams["error"])
		mu.Lock()
		res.Status = string(st)
		mu.Unlock()
	}()
	if s := streams["stdin"]; s != nil && send != "" {
		if _, err := s.Write([]byte(send)); err != nil {
			res.Error = err.Error()
		}
	}
	select {
	case <-matched:
		res.Matched = true
	case <-ended:
		// The server ended the attach: its Status follows on the error stream.
		select {
		case <-statusRead:
		case <-time.After(5 * time.Second):
		}
	case <-time.After(wait):
		res.Error = "timed out waiting for " + expect
	}
	sc.Close()
	conn.Close()
	mu.Lock()
	defer mu.Unlock()
	if len(out) > 4096 {
		out = out[len(out)-4096:]
	}
	res.Stdout = string(out)
	res.ElapsedMs = float64(time.Since(start).Microseconds()) / 1000
	return
}

// portForward: as client-go's portforward, an error stream then a data stream per
// connection, both with port and requestID; the request is written, the data stream
// half-closed, and the reply read to its end.
func portForward(rawURL, method string, ports []string, request string, connections, sendBytes int) (res result) {
	sc, conn := upgrade(rawURL, method, []string{"portforward.k8s.io"}, &res)
	if sc == nil {
		return
	}
	defer conn.Close()
	defer sc.Close()
	var total time.Duration
	for i := 0; i < connections; i++ {
		started := time.Now()
		f := forward{}
		h := http.Header{}
		h.Set("streamType", "error")
		h.Set("port", ports[i%len(ports)])
		h.Set("requestID", fmt.Sprint(i))
		errStream, err := createStream(sc, h)
		if err != nil {
			res.Error = err.Error()
			return
		}
		// client-go closes its side of the error stream at once: it only reads it.
		errStream.Close()
		h.Set("streamType", "data")
		data, err := createStream(sc, h)
		if err != nil {
			res.Error = err.Error()
			return
		}
		errCh := make(chan string, 1)
		go func() {
			b, _ := ioutil.ReadAll(errStream)
			errCh <- string(b)
		}()
		go func() {
			data.Write([]byte(request))
			zeros := make([]byte, 64*1024)
			for left := sendBytes; left > 0; {
				n := len(zeros)
				if left < n {
					n = left
				}
				if _, err := data.Write(zeros[:n]); err != nil {
					break
				}
				left -= n
			}
			data.Close() // half-close: the pod sees EOF and may still answer
		}()
		var reply []byte
		buf := make([]byte, 64*1024)
		for {
			n, err := data.Read(buf)
			if n > 0 && f.FirstByteMs == 0 {
				f.FirstByteMs = float64(time.Since(started).Microseconds()) / 1000
			}
			f.ReplyLen += n
			if len(reply) < 4096 {
				reply = append(reply, buf[:n]...)
			}
			if err != nil {
				break
			}
		}
		f.Reply = string(reply)
		select {
		case f.Error = <-errCh:
		case <-time.After(10 * time.Second):
			f.Error = "(error stream not closed)"
		}
		total += time.Since(started)
		res.Forwards = append(res.Forwards, f)
	}
	res.ElapsedMs = float64(total.Microseconds()) / 1000 / float64(connections)
	return
}

// direct: what portForward does per connection, over plain TCP to addr: the baseline.
func direct(addr, request string, connections, sendBytes int) (res result) {
	var total time.Duration
	for i := 0; i < connections; i++ {
		started := time.Now()
		f := forward{}
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			res.Error = err.Error()
			return
		}
		go func() {
			c.Write([]byte(request))
			zeros := make([]byte, 64*1024)
			for left := sendBytes; left > 0; {
				n := len(zeros)
				if left < n {
					n = left
				}
				if _, err := c.Write(zeros[:n]); err != nil {
					break
				}
				left -= n
			}
			c.(*net.TCPConn).CloseWrite()
		}()
		buf := make([]byte, 64*1024)
		var reply []byte
		for {
			n, err := c.Read(buf)
			if n > 0 && f.FirstByteMs == 0 {
				f.FirstByteMs = float64(time.Since(started).Microseconds()) / 1000
			}
			f.ReplyLen += n
			if len(reply) < 4096 {
				reply = append(reply, buf[:n]...)
			}
			if err != nil {
				break
			}
		}
		c.Close()
		f.Reply = string(reply)
		total += time.Since(started)
		res.Forwards = append(res.Forwards, f)
	}
	res.ElapsedMs = float64(total.Microseconds()) / 1000 / float64(connections)
	return
}
