// Command gofront is a prototype: a gRPC front end in Go (grpc-go) for the KServe v2 inference
// protocol that batches requests per model and hands each batch to a Python ONNX Runtime worker
// (worker.py) over a Unix socket. It measures what a non-Python front end would gain over
// grpcio (docs/server-benchmarks.md, "A non-Python front end (prototype)"). It serves ServerLive,
// ServerReady, ModelReady, ModelMetadata and ModelInfer with raw_input_contents; every other
// method answers UNIMPLEMENTED. No TLS, auth, metrics or tracing: a prototype, not a product.
//
//	gofront --worker-socket /tmp/w.sock --grpc-port 8001 --http-port 8000
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// rawCodec hands handlers the message bytes as they arrived and sends back bytes as built:
// the messages are walked and written with protowire (wire.go), no generated code.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	if b, ok := v.([]byte); ok {
		return b, nil
	}
	return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*p = data
	return nil
}

func (rawCodec) Name() string { return "proto" }

var elementSize = map[string]int64{
	"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
	"UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8,
}

type front struct {
	models   map[string]*batcher
	metadata map[string][]byte
}

// validate checks one request against its model before it is queued, so that a bad request is
// refused alone, and returns its inputs in the model's order and its batch size.
func validate(m *model, r *inferRequest) ([]outputTensor, int64, error) {
	for _, t := range r.inputs {
		if t.hasTyped {
			return nil, 0, status.Errorf(codes.Unimplemented,
				"input %q: typed `contents` are not supported by this prototype; send raw_input_contents", t.name)
		}
	}
	if len(r.inputs) != len(m.Inputs) {
		return nil, 0, status.Errorf(codes.InvalidArgument, "model %q expects %d inputs, got %d", m.Name, len(m.Inputs), len(r.inputs))
	}
	if len(r.raw) != len(r.inputs) {
		return nil, 0, status.Errorf(codes.InvalidArgument,
			"raw_input_contents has %d entries, expected one per input (%d)", len(r.raw), len(r.inputs))
	}
	out := make([]outputTensor, len(m.Inputs))
	seen := make([]bool, len(m.Inputs))
	batch := int64(-1)
	for k, t := range r.inputs {
		i := -1
		for n, spec := range m.Inputs {
			if spec.Name == t.name {
				i = n
			}
		}
		if i < 0 {
			return nil, 0, status.Errorf(codes.InvalidArgument, "model %q has no input %q", m.Name, t.name)
		}
		if seen[i] {
			return nil, 0, status.Errorf(codes.InvalidArgument, "input %q given twice", t.name)
		}
		seen[i] = true
		spec := m.Inputs[i]
		if t.datatype != spec.Datatype {
			return nil, 0, status.Errorf(codes.InvalidArgument, "input %q: datatype %q, expected %q", t.name, t.datatype, spec.Datatype)
		}
		size, ok := elementSize[t.datatype]
		if !ok {
			return nil, 0, status.Errorf(codes.Unimplemented, "input %q: datatype %s is not supported by this prototype", t.name, t.datatype)
		}
		if len(t.shape) != len(spec.Shape) {
			return nil, 0, status.Errorf(codes.InvalidArgument, "input %q: shape %v, expected %v", t.name, t.shape, spec.Shape)
		}
		for d, n := range t.shape {
			if n < 0 || (spec.Shape[d] >= 0 && n != spec.Shape[d]) {
				return nil, 0, status.Errorf(codes.InvalidArgument, "input %q: shape %v, expected %v", t.name, t.shape, spec.Shape)
			}
		}
		want := byteSize(t.shape, size, int64(len(r.raw[k])))
		if want != int64(len(r.raw[k])) {
			return nil, 0, status.Errorf(codes.InvalidArgument,
				"input %q: raw_input_contents holds %d bytes, shape %v of %s needs %s",
				t.name, len(r.raw[k]), t.shape, t.datatype, needs(want))
		}
		if m.MaxBatch > 0 {
			if t.shape[0] < 1 || t.shape[0] > m.MaxBatch {
				return nil, 0, status.Errorf(codes.InvalidArgument,
					"input %q: batch size %d, expected 1 to %d", t.name, t.shape[0], m.MaxBatch)
			}
			if batch >= 0 && t.shape[0] != batch {
				return nil, 0, status.Errorf(codes.InvalidArgument,
					"input %q: batch size %d differs from the other inputs' %d", t.name, t.shape[0], batch)
			}
			batch = t.shape[0]
		}
		out[i] = outputTensor{name: t.name, datatype: t.datatype, shape: t.shape, raw: r.raw[k]}
	}
	if batch < 0 {
		batch = 1
	}
	return out, batch, nil
}

// byteSize is prod(shape) * size, or -1 when that is more than limit (never overflowing).
func byteSize(shape []int64, size, limit int64) int64 {
	for _, n := range shape {
		if n == 0 {
			return 0
		}
	}
	want := size
	for _, n := range shape {
		if want > limit/n+1 {
			return -1
		}
		want *= n
	}
	return want
}

func needs(want int64) string {
	if want < 0 {
		return "more"
	}
	return fmt.Sprint(want)
}

func (f *front) infer(ctx context.Context, msg []byte) ([]byte, error) {
	r, err := parseInferRequest(msg)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	b, ok := f.models[r.model]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "model %q is not served here", r.model)
	}
	inputs, batch, err := validate(b.m, r)
	if err != nil {
		return nil, err
	}
	j := &job{inputs: inputs, batch: batch, arrived: time.Now(), done: make(chan answer, 1)}
	select {
	case b.q <- j:
	default:
		return nil, status.Errorf(codes.ResourceExhausted, "model %q: queue full (%d requests)", r.model, cap(b.q))
	}
	var a answer
	select {
	case a = <-j.done:
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if a.err != nil {
		if _, isRun := a.err.(*workerError); isRun {
			return nil, status.Errorf(codes.InvalidArgument, "model %q: ONNX Runtime refused the request: %s", r.model, a.err)
		}
		return nil, status.Errorf(codes.Unavailable, "model %q: worker: %s", r.model, a.err)
	}
	outs := a.outs
	if len(r.outputs) > 0 {
		outs = outs[:0:0]
		for _, name := range r.outputs {
			found := false
			for _, o := range a.outs {
				if o.name == name {
					outs, found = append(outs, o), true
				}
			}
			if !found {
				return nil, status.Errorf(codes.InvalidArgument, "model %q has no output %q", r.model, name)
			}
		}
	}
	return encodeInferResponse(r.model, "1", r.id, outs), nil
}

// unary adapts a bytes-in, bytes-out function to grpc-go's method handler.
func unary(fn func(context.Context, []byte) ([]byte, error)) grpc.MethodHandler {
	return func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		out, err := fn(ctx, in)
		if err != nil {
			return nil, err
		}
		return out, nil
	}
}

func (f *front) service() *grpc.ServiceDesc {
	always := func(context.Context, []byte) ([]byte, error) { return boolMessage(true), nil }
	ready := func(_ context.Context, msg []byte) ([]byte, error) {
		name, err := parseName(msg, "ModelReadyRequest")
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		_, ok := f.models[name]
		return boolMessage(ok), nil
	}
	metadata := func(_ context.Context, msg []byte) ([]byte, error) {
		name, err := parseName(msg, "ModelMetadataRequest")
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		md, ok := f.metadata[name]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "model %q is not served here", name)
		}
		return md, nil
	}
	return &grpc.ServiceDesc{
		ServiceName: "inference.GRPCInferenceService",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "ServerLive", Handler: unary(always)},
			{MethodName: "ServerReady", Handler: unary(always)},
			{MethodName: "ModelReady", Handler: unary(ready)},
			{MethodName: "ModelMetadata", Handler: unary(metadata)},
			{MethodName: "ModelInfer", Handler: unary(f.infer)},
		},
		Metadata: "grpc_predict_v2.proto",
	}
}

func (f *front) httpHandler() http.Handler {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(`{"live":true}`)) }
	mux.HandleFunc("GET /v2/health/live", ok)
	mux.HandleFunc("GET /v2/health/ready", ok)
	mux.HandleFunc("GET /v2/models/{name}/ready", func(w http.ResponseWriter, r *http.Request) {
		if _, found := f.models[r.PathValue("name")]; !found {
			http.Error(w, `{"error":"unknown model"}`, http.StatusNotFound)
			return
		}
		w.Write([]byte(`{"ready":true}`))
	})
	return mux
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("gofront: ")
	socket := flag.String("worker-socket", "", "Unix socket of the ONNX Runtime worker (worker.py); required")
	address := flag.String("address", "127.0.0.1", "address to listen on")
	grpcPort := flag.Int("grpc-port", 8001, "gRPC port (KServe v2 GRPCInferenceService)")
	httpPort := flag.Int("http-port", 8000, "HTTP port for /v2/health/live, /v2/health/ready, /v2/models/{name}/ready")
	maxDelay := flag.Duration("max-delay", 0, "wait up to this long after a batch's oldest request for more (0: batch what is queued)")
	maxBatch := flag.Int64("max-batch", 0, "cap every batch at this many samples (0: each model's max batch; 1: no batching)")
	queue := flag.Int("queue", 1024, "requests queued per model before RESOURCE_EXHAUSTED")
	wait := flag.Duration("worker-wait", 120*time.Second, "how long to wait for the worker's socket")
	flag.Parse()
	if *socket == "" {
		flag.Usage()
		os.Exit(2)
	}
	first, hs, err := dial(*socket, *wait)
	if err != nil {
		log.Fatal(err)
	}
	f := &front{models: map[string]*batcher{}, metadata: map[string][]byte{}}
	names := []string{}
	for i, m := range hs.Models {
		w := first
		if i > 0 { // one connection per model: models run side by side in the worker
			if w, _, err = dial(*socket, *wait); err != nil {
				log.Fatal(err)
			}
		}
		b := &batcher{m: m, w: w, q: make(chan *job, *queue), maxDelay: *maxDelay, maxBatch: m.MaxBatch}
		if *maxBatch > 0 && *maxBatch < b.maxBatch {
			b.maxBatch = *maxBatch
		}
		f.models[m.Name], f.metadata[m.Name] = b, encodeMetadata(m)
		names = append(names, fmt.Sprintf("%s (max batch %d)", m.Name, m.MaxBatch))
		go b.loop()
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}),
		grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	srv.RegisterService(f.service(), struct{}{})
	gl, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *address, *grpcPort))
	if err != nil {
		log.Fatal(err)
	}
	hl, err := net.Listen("tcp", fmt.Sprintf("%s:%d", *address, *httpPort))
	if err != nil {
		log.Fatal(err)
	}
	hsrv := &http.Server{Handler: f.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(gl); err != nil {
			log.Fatal(err)
		}
	}()
	go func() {
		if err := hsrv.Serve(hl); err != http.ErrServerClosed {
			log.Fatal(err)
		}
	}()
	log.Printf("serving %s: gRPC %s, HTTP %s", strings.Join(names, ", "), gl.Addr(), hl.Addr())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	hsrv.Close()
	srv.Stop()
	for _, m := range hs.Models {
		b := f.models[m.Name]
		n, k := b.requests.Load(), b.batches.Load()
		log.Printf("model %s: %d requests in %d batches (mean %.2f per batch)", m.Name, n, k, float64(n)/max(float64(k), 1))
	}
}
