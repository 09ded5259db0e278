// Command loadgen is the publish benchmark's HTTP/1.1 load generator (bench/loadgen.py runs it).
//
// It exists because a Python load generator sharing 2 cores with the server under test was itself the
// ceiling: it could not keep a no-op FastAPI endpoint busy. This one costs a few microseconds per request.
//
//	closed: -connections N keep-alive connections, each sending its next request when the last one answered.
//	open:   -rate R requests/s for -seconds, each scheduled at start + i/R; the latency counts from that
//	        scheduled time (no coordinated omission). A request finds an idle connection among
//	        -max-connections or is counted as an error (the generator could not keep the rate).
//
// Connections go round-robin over -ports. Every request is the same bytes: "POST <path> HTTP/1.1", Host,
// Content-Length, Content-Type: application/json, each -header, the -body. One JSON object is printed:
// requests (answered), ok (answered with -ok), errors (failed plus answered otherwise), ok_per_s, p50_ms,
// p99_ms, statuses, and the generator's own CPU time per answered request.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

// request is the raw bytes sent, the same as bench/loadgen.py's build_request made them.
func request(path, body string, extra []string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\nContent-Type: application/json\r\n",
		path, len(body))
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n" + body)
	return b.Bytes()
}

// timeout bounds each request (dial, write, whole response): a stuck server fails requests, never the run.
var timeout = 30 * time.Second

// conn is one keep-alive connection, dialled on first use.
type conn struct {
	port int
	c    net.Conn
	r    *bufio.Reader
}

// do sends raw and returns the response's status code, having read the whole response.
func (k *conn) do(raw []byte) (int, error) {
	if k.c == nil {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(k.port), timeout)
		if err != nil {
			return 0, err
		}
		k.c, k.r = c, bufio.NewReaderSize(c, 16<<10)
	}
	if err := k.c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return 0, err
	}
	if _, err := k.c.Write(raw); err != nil {
		return 0, err
	}
	line, err := k.r.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	fields := bytes.Fields(line)
	if len(fields) < 2 {
		return 0, errors.New("bad status line")
	}
	status, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, err
	}
	length := 0
	for {
		h, err := k.r.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(h) <= 2 { // the blank line ending the headers
			break
		}
		if name, value, ok := bytes.Cut(h, []byte(":")); ok && strings.EqualFold(string(name), "content-length") {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(value))); err != nil {
				return 0, err
			}
		}
	}
	if _, err := k.r.Discard(length); err != nil {
		return 0, err
	}
	return status, nil
}

func (k *conn) close() {
	if k.c != nil {
		k.c.Close()
		k.c = nil
	}
}

// result collects answered requests (status and latency) and failures, from any goroutine.
type result struct {
	mu        sync.Mutex
	latencies []time.Duration
	statuses  map[int]int
	errors    int
}

func (r *result) add(status int, latency time.Duration) {
	r.mu.Lock()
	r.statuses[status]++
	r.latencies = append(r.latencies, latency)
	r.mu.Unlock()
}

func (r *result) fail() {
	r.mu.Lock()
	r.errors++
	r.mu.Unlock()
}

func closedLoop(ports []int, raw []byte, connections int, seconds float64, res *result) {
	stop := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	var wg sync.WaitGroup
	for i := 0; i < connections; i++ {
		wg.Add(1)
		go func(port int) {
			defer wg.Done()
			k := &conn{port: port}
			defer k.close()
			for time.Now().Before(stop) {
				t := time.Now()
				status, err := k.do(raw)
				if err != nil {
					res.fail()
					k.close() // dialled again by the next request
					continue
				}
				res.add(status, time.Since(t))
			}
		}(ports[i%len(ports)])
	}
	wg.Wait()
}

func openLoop(ports []int, raw []byte, rate, seconds float64, maxConnections int, res *result) {
	idle := make(chan *conn, maxConnections)
	for i := 0; i < maxConnections; i++ {
		idle <- &conn{port: ports[i%len(ports)]}
	}
	n := int(rate * seconds)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		scheduled := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		time.Sleep(time.Until(scheduled))
		select {
		case k := <-idle:
			wg.Add(1)
			go func() {
				defer wg.Done()
				status, err := k.do(raw)
				if err != nil {
					res.fail()
					k.close()
				} else {
					res.add(status, time.Since(scheduled))
				}
				idle <- k
			}()
		default:
			res.fail() // more in flight than connections: a failure to keep the rate
		}
	}
	wg.Wait()
	close(idle)
	for k := range idle {
		k.close()
	}
}

// pct is the sorted value at index int(p/100*n), in milliseconds; nil (JSON null) without any.
func pct(sorted []time.Duration, p float64) *float64 {
	if len(sorted) == 0 {
		return nil
	}
	i := min(len(sorted)-1, int(p/100*float64(len(sorted))))
	ms := round(float64(sorted[i])/1e6, 2)
	return &ms
}

// summary is what is printed, in this order.
type summary struct {
	Requests int            `json:"requests"`
	OK       int            `json:"ok"`
	Errors   int            `json:"errors"`
	OKPerS   float64        `json:"ok_per_s"`
	P50ms    *float64       `json:"p50_ms"`
	P99ms    *float64       `json:"p99_ms"`
	Statuses map[string]int `json:"statuses"`
	CPU      float64        `json:"loadgen_cpu_us_per_request"`
}

func round(x float64, digits int) float64 {
	m := math.Pow(10, float64(digits))
	return math.Round(x*m) / m
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func main() {
	mode := flag.String("mode", "closed", "closed or open")
	portList := flag.String("ports", "", "comma-separated ports on 127.0.0.1")
	path := flag.String("path", "/", "request path")
	body := flag.String("body", "", "request body (JSON)")
	var extra headers
	flag.Var(&extra, "header", "an extra request header, 'Name: value' (repeatable)")
	connections := flag.Int("connections", 64, "closed loop: connections")
	rate := flag.Float64("rate", 100, "open loop: requests per second")
	maxConnections := flag.Int("max-connections", 128, "open loop: connections at most")
	seconds := flag.Float64("seconds", 10, "how long to send")
	okStatus := flag.Int("ok", 202, "the status that counts as ok")
	flag.DurationVar(&timeout, "timeout", timeout, "a request's time limit (an error past it)")
	flag.Parse()

	var ports []int
	for _, p := range strings.Split(*portList, ",") {
		port, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: bad -ports %q\n", *portList)
			os.Exit(2)
		}
		ports = append(ports, port)
	}
	raw := request(*path, *body, extra)
	res := &result{statuses: map[int]int{}}
	cpu := cpuSeconds()
	start := time.Now()
	switch *mode {
	case "closed":
		closedLoop(ports, raw, *connections, *seconds, res)
	case "open":
		openLoop(ports, raw, *rate, *seconds, *maxConnections, res)
	default:
		fmt.Fprintf(os.Stderr, "loadgen: -mode must be closed or open, not %q\n", *mode)
		os.Exit(2)
	}
	elapsed := time.Since(start).Seconds()
	cpu = cpuSeconds() - cpu

	sort.Slice(res.latencies, func(i, j int) bool { return res.latencies[i] < res.latencies[j] })
	answered, ok := len(res.latencies), res.statuses[*okStatus]
	out := summary{
		Requests: answered,
		OK:       ok,
		Errors:   res.errors + answered - ok,
		OKPerS:   round(float64(ok)/elapsed, 1),
		P50ms:    pct(res.latencies, 50),
		P99ms:    pct(res.latencies, 99),
		Statuses: map[string]int{},
		CPU:      round(cpu*1e6/float64(max(answered, 1)), 1),
	}
	for s, n := range res.statuses {
		out.Statuses[strconv.Itoa(s)] = n
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
