// Wrapper module that pins the OCI registry (CNCF distribution, Apache-2.0)
// the tests push charts to and Flux pulls them from.
module vworkspace.invalid/oci-registry

go 1.26.0

require github.com/distribution/distribution/v3 v3.1.2

tool github.com/distribution/distribution/v3/cmd/registry
