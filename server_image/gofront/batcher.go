package main

// Dynamic batching per model, as modelship-server's scheduler does it for one session: while a
// batch runs, requests queue; when the session is free, everything queued (up to max_batch, and
// with the same non-batch dimensions) goes as one batch. A max delay > 0 also waits for more up to
// that long after the oldest request arrived.
import (
	"errors"
	"sync/atomic"
	"time"
)

type answer struct {
	outs []outputTensor
	err  error
}

// job is one validated request: its inputs in the model's input order.
type job struct {
	inputs  []outputTensor
	batch   int64
	arrived time.Time
	done    chan answer // buffered: the batcher never waits for a caller that gave up
}

type batcher struct {
	m        *model
	maxBatch int64 // samples per batch: the model's max_batch, or less (--max-batch)
	w        *workerConn
	q        chan *job
	maxDelay time.Duration
	// Requests answered and batches run, for the log line at exit (the mean batch size).
	requests, batches atomic.Int64
}

func sameTail(a, b *job) bool {
	for i := range a.inputs {
		x, y := a.inputs[i].shape, b.inputs[i].shape
		for d := 1; d < len(x); d++ {
			if x[d] != y[d] {
				return false
			}
		}
	}
	return true
}

func (b *batcher) loop() {
	var carry *job
	for {
		first := carry
		carry = nil
		if first == nil {
			first = <-b.q
		}
		batch, size := []*job{first}, first.batch
		var timer <-chan time.Time
		var t *time.Timer
		if b.maxDelay > 0 {
			t = time.NewTimer(time.Until(first.arrived.Add(b.maxDelay)))
			timer = t.C
		}
	gather:
		for size < b.maxBatch {
			var j *job
			select {
			case j = <-b.q:
			default:
				if timer == nil {
					break gather
				}
				select {
				case j = <-b.q:
				case <-timer:
					break gather
				}
			}
			if size+j.batch > b.maxBatch || !sameTail(first, j) {
				carry = j
				break
			}
			batch, size = append(batch, j), size+j.batch
		}
		if t != nil {
			t.Stop()
		}
		b.requests.Add(int64(len(batch)))
		b.batches.Add(1)
		b.run(batch, size)
	}
}

// run sends one batch and hands each request its rows; when ONNX Runtime refuses a batch of
// several, each request runs alone, so one bad request fails alone.
func (b *batcher) run(batch []*job, size int64) {
	if len(batch) == 1 {
		outs, err := b.w.run(b.m.Name, batch[0].inputs)
		batch[0].done <- answer{outs, err}
		return
	}
	inputs := make([]outputTensor, len(b.m.Inputs))
	for i := range inputs {
		first := batch[0].inputs[i]
		total := 0
		for _, j := range batch {
			total += len(j.inputs[i].raw)
		}
		raw := make([]byte, 0, total)
		for _, j := range batch {
			raw = append(raw, j.inputs[i].raw...)
		}
		shape := append([]int64{size}, first.shape[1:]...)
		inputs[i] = outputTensor{name: first.name, datatype: first.datatype, shape: shape, raw: raw}
	}
	outs, err := b.w.run(b.m.Name, inputs)
	var werr *workerError
	if errors.As(err, &werr) {
		for _, j := range batch {
			b.run([]*job{j}, j.batch)
		}
		return
	}
	if err == nil {
		for _, o := range outs {
			if len(o.shape) == 0 || o.shape[0] != size || int64(len(o.raw))%size != 0 {
				err = errors.New("output " + o.name + " has no batch dimension matching the batch")
			}
		}
	}
	if err != nil {
		for _, j := range batch {
			j.done <- answer{nil, err}
		}
		return
	}
	offsets := make([]int64, len(outs))
	for _, j := range batch {
		mine := make([]outputTensor, len(outs))
		for k, o := range outs {
			row := int64(len(o.raw)) / size
			n := row * j.batch
			mine[k] = outputTensor{name: o.name, datatype: o.datatype,
				shape: append([]int64{j.batch}, o.shape[1:]...), raw: o.raw[offsets[k] : offsets[k]+n : offsets[k]+n]}
			offsets[k] += n
		}
		j.done <- answer{mine, nil}
	}
}
