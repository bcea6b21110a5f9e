// Wrapper module that pins the Flux controllers and the helm CLI the test
// harness runs. Kept apart from k8s-bins: Flux builds against older k8s.io
// client libraries than the API server, and one module would let minimal
// version selection raise them.
module vworkspace.invalid/flux-test-bins

go 1.26.0

require (
	github.com/fluxcd/helm-controller v1.6.3
	github.com/fluxcd/source-controller v1.9.3
	helm.sh/helm/v4 v4.2.4
)

// helm-controller v1.6.3 pins the fork github.com/fluxcd/helm/v4 v4.2.4-flux.1,
// which the module proxy refuses; upstream v4.2.4 carries the same fix
// (fluxcd/helm-controller#1565 moved v1.6 back to upstream helm).
replace helm.sh/helm/v4 => helm.sh/helm/v4 v4.2.4

// Both controllers replace go-digest with a snapshot that has BLAKE3; this is
// the newer of their two pins.
replace github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20231025023718-d50d2fec9c98

replace (
	sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1
	sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1
)

tool (
	github.com/fluxcd/helm-controller
	github.com/fluxcd/source-controller
	helm.sh/helm/v4/cmd/helm
)
