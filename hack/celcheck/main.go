// celcheck runs the API server's own validation code outside an API server, so tests can
// check the generated CRDs without a cluster: it validates a CRD file as `kubectl apply`
// would (structural schema, CEL compilation and the CEL cost limits), exiting 2 with the
// errors if the API server would refuse the CRD; then it reads objects as JSON lines on
// stdin, applies the schema's defaults, runs the OpenAPI schema and the CEL rules, and
// prints each object's errors as one JSON list per line ([] when the object is accepted).
//
// Usage: celcheck CRD.yaml < objects.jsonl
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"

	apiextensionsinternal "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	crdvalidation "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var v1crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.UnmarshalStrict(raw, &v1crd); err != nil {
		panic(err)
	}
	v1crd.Status.StoredVersions = []string{v1crd.Spec.Versions[0].Name}
	var crd apiextensionsinternal.CustomResourceDefinition
	if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(&v1crd, &crd, nil); err != nil {
		panic(err)
	}
	errs := crdvalidation.ValidateCustomResourceDefinition(context.Background(), &crd)
	for _, e := range errs {
		fmt.Fprintln(os.Stderr, "CRD:", e.Error())
	}
	if len(errs) > 0 {
		os.Exit(2)
	}
	var props *apiextensionsinternal.JSONSchemaProps
	if crd.Spec.Versions[0].Schema != nil {
		props = crd.Spec.Versions[0].Schema.OpenAPIV3Schema
	} else {
		props = crd.Spec.Validation.OpenAPIV3Schema
	}
	ss, err := schema.NewStructural(props)
	if err != nil {
		panic(err)
	}
	sv, _, err := apiservervalidation.NewSchemaValidator(props)
	if err != nil {
		panic(err)
	}
	celv := cel.NewValidator(ss, true, celconfig.PerCallLimit)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64<<20), 64<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var obj map[string]interface{}
		if err := json.Unmarshal(in.Bytes(), &obj); err != nil {
			panic(err)
		}
		structuraldefaulting.Default(obj, ss)
		var msgs []string
		for _, e := range apiservervalidation.ValidateCustomResource(field.NewPath(""), obj, sv) {
			msgs = append(msgs, e.Error())
		}
		if len(msgs) == 0 {
			es, _ := celv.Validate(context.Background(), field.NewPath(""), ss, obj, nil, celconfig.RuntimeCELCostBudget)
			for _, e := range es {
				msgs = append(msgs, e.Error())
			}
		}
		if msgs == nil {
			msgs = []string{}
		}
		out.Encode(msgs)
	}
}
