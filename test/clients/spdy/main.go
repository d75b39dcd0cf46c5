// stream-client-go: a CRI streaming client built on moby/spdystream (the SPDY library
// client-go's remotecommand uses), for vmlet's tests. It upgrades the way apimachinery's
// SpdyRoundTripper does, opens the remotecommand streams in client-go's order (error,
// stdin, stdout, stderr, resize), sends stdin, reads everything and prints one JSON line.
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
	flag.Parse()
	res := run(*rawURL, *method, strings.Split(*protocols, ","), *openStdin, *stdin, *stdinRepeat, *stdout, *stderr, *tty, *resize)
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
