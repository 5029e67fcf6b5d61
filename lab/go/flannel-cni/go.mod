// Build manifest for the real-node lab's flannel CNI plugin (see lib/mlplat/lab/build.py).
// The bundle's manifest installs /flannel from flannel-io's flannel-cni-plugin image; that module
// (github.com/flannel-io/cni-plugin) is not served here. Its source started as the flannel meta
// plugin of github.com/containernetworking/plugins, which shipped it up to v0.9.1 (v1.0.0 moved
// it out): that upstream plugin is built here. Same contract: it reads /run/flannel/subnet.env
// and delegates to the bridge and host-local plugins in /opt/cni/bin.
module mlplat.invalid/lab/flannel-cni

go 1.25

tool github.com/containernetworking/plugins/plugins/meta/flannel

require (
	github.com/Microsoft/go-winio v0.4.11 // indirect
	github.com/Microsoft/hcsshim v0.8.6 // indirect
	github.com/buger/jsonparser v0.0.0-20180808090653-f4dd9f5a6b44 // indirect
	github.com/containernetworking/cni v0.8.1 // indirect
	github.com/containernetworking/plugins v0.9.1 // indirect
	github.com/sirupsen/logrus v1.0.6 // indirect
	golang.org/x/crypto v0.0.0-20200622213623-75b288015ac9 // indirect
	golang.org/x/sys v0.0.0-20201117170446-d9b008d0a637 // indirect
)
