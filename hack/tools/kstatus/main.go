// Command kstatus reads Kubernetes objects (a JSON array on stdin) and prints kstatus's verdict for each.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	var objs []json.RawMessage
	if err := json.NewDecoder(os.Stdin).Decode(&objs); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: stdin must be a JSON array of objects:", err)
		os.Exit(2)
	}
	out := make([]map[string]string, 0, len(objs))
	for _, raw := range objs {
		// Decoded as the API machinery does (integers stay int64), not as plain JSON floats.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(raw); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: not a Kubernetes object:", err)
			os.Exit(2)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", err)
			os.Exit(1)
		}
		out = append(out, map[string]string{"status": res.Status.String(), "message": res.Message})
	}
	_ = json.NewEncoder(os.Stdout).Encode(out)
}
