package main

// The KServe v2 messages this prototype reads and writes, walked and built field by field with
// protowire: no generated code, and tensor bytes stay slices of the received message (no copy).
// Field numbers are those of grpc_predict_v2.proto (package inference).

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// inputTensor is one InferInputTensor: name 1, datatype 2, shape 3, parameters 4, contents 5.
type inputTensor struct {
	name      string
	datatype  string
	shape     []int64
	hasTyped  bool // `contents` (typed fields) given: not supported here
	rawBytes  []byte
	hasRawSet bool
}

// inferRequest is a ModelInferRequest: model_name 1, model_version 2, id 3, parameters 4,
// inputs 5, outputs 6, raw_input_contents 7.
type inferRequest struct {
	model   string
	version string
	id      string
	inputs  []inputTensor
	outputs []string // requested output names, in order; empty: all
	raw     [][]byte
}

// fieldError is a malformed message: the caller answers INVALID_ARGUMENT with it.
type fieldError struct{ msg string }

func (e *fieldError) Error() string { return e.msg }

func bad(format string, args ...any) error { return &fieldError{fmt.Sprintf(format, args...)} }

// walk calls visit for every field of b; visit gets the number, the wire type and the field's
// value (bytes for BytesType, the varint otherwise) and skips what it does not know.
func walk(b []byte, what string, visit func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return bad("%s: malformed field tag", what)
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return bad("%s: malformed field %d", what, num)
		}
		b = b[n:]
		if err := visit(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

func parseShape(dst []int64, typ protowire.Type, v []byte, x uint64, what string) ([]int64, error) {
	if typ == protowire.VarintType {
		return append(dst, int64(x)), nil
	}
	for len(v) > 0 {
		d, n := protowire.ConsumeVarint(v)
		if n < 0 {
			return nil, bad("%s: malformed shape", what)
		}
		dst = append(dst, int64(d))
		v = v[n:]
	}
	return dst, nil
}

func parseInferRequest(b []byte) (*inferRequest, error) {
	r := &inferRequest{}
	err := walk(b, "ModelInferRequest", func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch num {
		case 1:
			r.model = string(v)
		case 2:
			r.version = string(v)
		case 3:
			r.id = string(v)
		case 5:
			t := inputTensor{}
			err := walk(v, "InferInputTensor", func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				var err error
				switch num {
				case 1:
					t.name = string(v)
				case 2:
					t.datatype = string(v)
				case 3:
					t.shape, err = parseShape(t.shape, typ, v, x, "input "+t.name)
				case 5:
					t.hasTyped = t.hasTyped || len(v) > 0
				}
				return err
			})
			if err != nil {
				return err
			}
			r.inputs = append(r.inputs, t)
		case 6:
			name := ""
			err := walk(v, "InferRequestedOutputTensor", func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
				if num == 1 {
					name = string(v)
				}
				return nil
			})
			if err != nil {
				return err
			}
			r.outputs = append(r.outputs, name)
		case 7:
			r.raw = append(r.raw, v)
		}
		return nil
	})
	return r, err
}

// parseName reads field 1 (a string) of ModelReadyRequest / ModelMetadataRequest.
func parseName(b []byte, what string) (string, error) {
	name := ""
	err := walk(b, what, func(num protowire.Number, _ protowire.Type, v []byte, _ uint64) error {
		if num == 1 {
			name = string(v)
		}
		return nil
	})
	return name, err
}

func boolMessage(v bool) []byte {
	if !v {
		return []byte{}
	}
	return protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 1)
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
}

func appendPackedShape(b []byte, num protowire.Number, shape []int64) []byte {
	var packed []byte
	for _, d := range shape {
		packed = protowire.AppendVarint(packed, uint64(d))
	}
	return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), packed)
}

// tensorMeta encodes TensorMetadata / InferOutputTensor's first three fields (name, datatype, shape).
func tensorMeta(name, datatype string, shape []int64) []byte {
	b := appendString(nil, 1, name)
	b = appendString(b, 2, datatype)
	return appendPackedShape(b, 3, shape)
}

// outputTensor is one answer tensor: its metadata and raw bytes.
type outputTensor struct {
	name     string
	datatype string
	shape    []int64
	raw      []byte
}

func encodeInferResponse(model, version, id string, outs []outputTensor) []byte {
	size := 64
	for _, o := range outs {
		size += len(o.raw) + len(o.name) + 32
	}
	b := make([]byte, 0, size)
	b = appendString(b, 1, model)
	b = appendString(b, 2, version)
	b = appendString(b, 3, id)
	for _, o := range outs {
		b = protowire.AppendBytes(protowire.AppendTag(b, 5, protowire.BytesType), tensorMeta(o.name, o.datatype, o.shape))
	}
	for _, o := range outs {
		b = protowire.AppendBytes(protowire.AppendTag(b, 6, protowire.BytesType), o.raw)
	}
	return b
}

// encodeMetadata is a ModelMetadataResponse: name 1, versions 2, platform 3, inputs 4, outputs 5.
func encodeMetadata(m *model) []byte {
	b := appendString(nil, 1, m.Name)
	b = appendString(b, 2, "1")
	b = appendString(b, 3, "onnxruntime_onnx")
	for _, t := range m.Inputs {
		b = protowire.AppendBytes(protowire.AppendTag(b, 4, protowire.BytesType), tensorMeta(t.Name, t.Datatype, t.Shape))
	}
	for _, t := range m.Outputs {
		b = protowire.AppendBytes(protowire.AppendTag(b, 5, protowire.BytesType), tensorMeta(t.Name, t.Datatype, t.Shape))
	}
	return b
}
