// Command seedpool is the seeds' own design, kept as a peer for reactor's worker-pool
// benchmark (benches/workers.sh): a JSON-over-TCP server whose blocking handler
// (time.Sleep, or a busy loop with -spin) runs on a FIXED pool of goroutines fed by a
// bounded job queue.
//
// Protocol: a stream of {"Uid":"...","Val":"..."} objects (newline separated or back
// to back); each is answered, in request order, by one line
// {"Uid":"...","Val":"server: hello, <Val>","Ts":"<RFC3339 UTC>"}. Invalid JSON gets
// {"error":"invalid JSON: ..."} and the connection is closed after the answers before it.
//
// Per connection: a reader goroutine decodes messages with json.Decoder and turns each
// into a job {conn, seq, msg, result channel}; the result channel is queued on the
// connection's FIFO before the job goes onto the shared queue, and a writer goroutine
// drains the FIFO in order, so answers leave in request order whatever order the pool
// finishes them in. Standard library only.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"time"
)

// Requests one connection may have in flight before its reader stops reading.
const perConnInflight = 1024

type request struct {
	Uid string `json:"Uid"`
	Val string `json:"Val"`
}

type answer struct {
	Uid string `json:"Uid"`
	Val string `json:"Val"`
	Ts  string `json:"Ts"`
}

type job struct {
	conn *conn
	seq  uint64
	msg  request
	res  chan []byte // buffered (1): a worker never blocks on it
}

type conn struct {
	nc   net.Conn
	fifo chan chan []byte // result channels, in request order
}

var (
	addr  = flag.String("addr", "127.0.0.1:9100", "listen address")
	pool  = flag.Int("pool", 32, "handler goroutines (fixed)")
	queue = flag.Int("queue", 1024, "job queue length (buffered channel)")
	sleep = flag.Duration("sleep", 10*time.Millisecond, "time.Sleep per message")
	spin  = flag.Duration("spin", 0, "busy loop of this duration per message instead of -sleep")
)

func main() {
	flag.Parse()
	if *pool < 1 || *queue < 0 {
		fmt.Fprintln(os.Stderr, "seedpool: -pool must be at least 1 and -queue at least 0")
		os.Exit(2)
	}
	jobs := make(chan job, *queue)
	for i := 0; i < *pool; i++ {
		go worker(jobs)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("seedpool: %v", err)
	}
	work := fmt.Sprintf("sleep %v", *sleep)
	if *spin > 0 {
		work = fmt.Sprintf("spin %v", *spin)
	}
	log.Printf("seedpool: listening on %s, pool %d, queue %d, %s per message", ln.Addr(), *pool, *queue, work)
	for {
		nc, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			log.Printf("seedpool: accept: %v", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		c := &conn{nc: nc, fifo: make(chan chan []byte, perConnInflight)}
		go c.write()
		go c.read(jobs)
	}
}

// worker is one of the fixed pool: it runs the blocking handler and hands the answer
// line back to the job's connection.
func worker(jobs <-chan job) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for j := range jobs {
		if *spin > 0 {
			for t0 := time.Now(); time.Since(t0) < *spin; {
			}
		} else if *sleep > 0 {
			time.Sleep(*sleep)
		}
		buf.Reset()
		_ = enc.Encode(answer{
			Uid: j.msg.Uid,
			Val: "server: hello, " + j.msg.Val,
			Ts:  time.Now().UTC().Format(time.RFC3339),
		}) // Encode ends the line with '\n'
		j.res <- append([]byte(nil), buf.Bytes()...)
	}
}

// read decodes messages and queues a job for each; on EOF, a read error or invalid
// JSON it closes the FIFO, and the writer closes the connection once the answers queued
// before are out.
func (c *conn) read(jobs chan<- job) {
	defer close(c.fifo)
	dec := json.NewDecoder(bufio.NewReaderSize(c.nc, 16*1024))
	for seq := uint64(0); ; seq++ {
		var m request
		err := dec.Decode(&m)
		if err != nil {
			var te *json.UnmarshalTypeError
			switch {
			case errors.As(err, &te):
				// Well-formed JSON of the wrong shape: the decoder is still in step.
				c.fifo <- ready(errorLine(err))
				continue
			case err == io.EOF:
				return
			case isNetErr(err):
				return
			default:
				c.fifo <- ready(errorLine(err))
				return
			}
		}
		res := make(chan []byte, 1)
		c.fifo <- res // order first, so the writer waits for this answer in turn
		jobs <- job{conn: c, seq: seq, msg: m, res: res}
	}
}

// write sends the answers in request order, flushing only before it would wait.
func (c *conn) write() {
	defer c.nc.Close()
	w := bufio.NewWriterSize(c.nc, 16*1024)
	failed := false
	flush := func() {
		if !failed && w.Buffered() > 0 && w.Flush() != nil {
			failed = true
			c.nc.Close() // unblocks the reader
		}
	}
	for {
		var res chan []byte
		var ok bool
		select {
		case res, ok = <-c.fifo:
		default:
			flush()
			res, ok = <-c.fifo
		}
		if !ok {
			flush()
			return
		}
		var line []byte
		select {
		case line = <-res:
		default:
			flush()
			line = <-res
		}
		if !failed {
			if _, err := w.Write(line); err != nil {
				failed = true
				c.nc.Close()
			}
		}
		// After a failure keep draining, so no reader or worker waits on us.
	}
}

func ready(line []byte) chan []byte {
	ch := make(chan []byte, 1)
	ch <- line
	return ch
}

func errorLine(err error) []byte {
	b, _ := json.Marshal(map[string]string{"error": "invalid JSON: " + err.Error()})
	return append(b, '\n')
}

func isNetErr(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, net.ErrClosed)
}
