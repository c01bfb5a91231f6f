// Built in GOPATH mode against Debian's /usr/share/gocode (see scripts/build-vcsim):
// no module proxy, no network. This go.mod names the module for tooling only.
module vic-channel/tools/vcsim

go 1.19

require github.com/vmware/govmomi v0.24.2
