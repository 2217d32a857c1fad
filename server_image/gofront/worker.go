package main

// The Unix-socket link to the Python ONNX Runtime worker (worker.py). One connection per model,
// one run at a time on it. Every frame is a little-endian u32 length, then the body:
//
//	handshake (worker -> front, once per connection): JSON {"models": [model, ...]}
//	run (front -> worker):  str16 model, u16 n, n x tensor
//	answer (worker -> front): u8 0, u16 n, n x tensor   |   u8 1, UTF-8 error message
//	tensor: str16 name, str8 datatype, u8 rank, rank x i64 dims, u64 nbytes, bytes
import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

type tensorSpec struct {
	Name     string  `json:"name"`
	Datatype string  `json:"datatype"`
	Shape    []int64 `json:"shape"` // -1 for a dynamic dimension, the batch one included
}

type model struct {
	Name     string       `json:"name"`
	MaxBatch int64        `json:"max_batch"` // 0: the model has no batch dimension, no batching
	Inputs   []tensorSpec `json:"inputs"`
	Outputs  []tensorSpec `json:"outputs"`
}

type handshake struct {
	Models []*model `json:"models"`
}

// workerError is an error ONNX Runtime raised for a run (bad values, shapes it refuses).
type workerError struct{ msg string }

func (e *workerError) Error() string { return e.msg }

type workerConn struct {
	c net.Conn
}

// dial connects to the worker's socket, retrying while it starts, and reads its handshake.
func dial(path string, wait time.Duration) (*workerConn, *handshake, error) {
	deadline := time.Now().Add(wait)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			w := &workerConn{c: c}
			body, err := w.readFrame()
			if err != nil {
				c.Close()
				return nil, nil, fmt.Errorf("worker handshake: %w", err)
			}
			var h handshake
			if err := json.Unmarshal(body, &h); err != nil {
				c.Close()
				return nil, nil, fmt.Errorf("worker handshake: %w", err)
			}
			return w, &h, nil
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("worker socket %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *workerConn) readFrame() ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(w.c, n[:]); err != nil {
		return nil, err
	}
	body := make([]byte, binary.LittleEndian.Uint32(n[:]))
	_, err := io.ReadFull(w.c, body)
	return body, err
}

func appendStr(b []byte, s string, wide bool) []byte {
	if wide {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
	} else {
		b = append(b, byte(len(s)))
	}
	return append(b, s...)
}

// run sends one batch and returns the outputs, in the session's order.
func (w *workerConn) run(modelName string, inputs []outputTensor) ([]outputTensor, error) {
	h := make([]byte, 4, 256)
	h = appendStr(h, modelName, true)
	h = binary.LittleEndian.AppendUint16(h, uint16(len(inputs)))
	bufs := net.Buffers{}
	total := 0
	for _, t := range inputs {
		h = appendStr(h, t.name, true)
		h = appendStr(h, t.datatype, false)
		h = append(h, byte(len(t.shape)))
		for _, d := range t.shape {
			h = binary.LittleEndian.AppendUint64(h, uint64(d))
		}
		h = binary.LittleEndian.AppendUint64(h, uint64(len(t.raw)))
		bufs = append(bufs, h, t.raw)
		total += len(h) + len(t.raw)
		h = h[len(h):]
	}
	binary.LittleEndian.PutUint32(bufs[0], uint32(total-4))
	if _, err := bufs.WriteTo(w.c); err != nil {
		return nil, err
	}
	body, err := w.readFrame()
	if err != nil {
		return nil, err
	}
	return decodeAnswer(body)
}

func decodeAnswer(b []byte) ([]outputTensor, error) {
	short := errors.New("worker answer truncated")
	if len(b) < 1 {
		return nil, short
	}
	if b[0] != 0 {
		return nil, &workerError{string(b[1:])}
	}
	b = b[1:]
	if len(b) < 2 {
		return nil, short
	}
	n := int(binary.LittleEndian.Uint16(b))
	b = b[2:]
	outs := make([]outputTensor, 0, n)
	for i := 0; i < n; i++ {
		var t outputTensor
		if len(b) < 2 {
			return nil, short
		}
		l := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+l+1 {
			return nil, short
		}
		t.name = string(b[2 : 2+l])
		b = b[2+l:]
		l = int(b[0])
		if len(b) < 1+l+1 {
			return nil, short
		}
		t.datatype = string(b[1 : 1+l])
		b = b[1+l:]
		rank := int(b[0])
		b = b[1:]
		if len(b) < 8*rank+8 {
			return nil, short
		}
		for d := 0; d < rank; d++ {
			t.shape = append(t.shape, int64(binary.LittleEndian.Uint64(b[8*d:])))
		}
		b = b[8*rank:]
		size := binary.LittleEndian.Uint64(b)
		b = b[8:]
		if uint64(len(b)) < size {
			return nil, short
		}
		t.raw = b[:size:size]
		b = b[size:]
		outs = append(outs, t)
	}
	return outs, nil
}
