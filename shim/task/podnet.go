package task

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Bounds for the pod's resolv.conf, which the host's CNI/CRI wrote. The
// guest (guest-image/netconf) enforces its own limits on what it receives;
// these keep the shim from reading or sending more than it could use.
const (
	maxResolvConfSize = 64 << 10
	maxDNSServers     = 3 // what glibc's resolver uses
	maxDNSSearches    = 6
)

// podNetNS returns the network namespace the task's spec names by path (as
// CRI and `ctr run --with-ns network:PATH` write it), or "" when the task
// has none and the VM uses QEMU's user-mode network.
func podNetNS(spec *specs.Spec) string {
	if spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// guestSpec is the spec the guest gets: namespace paths name the host's
// namespaces (CRI points a pod's containers at the pause process's IPC, UTS
// and PID namespaces; the guest refuses paths), so they are dropped. The
// network namespace entry with a path goes entirely, with the spec's net.*
// sysctls: containers share the guest's network, which is where the pod's
// interfaces are and where CreateSandbox set those sysctls (a network
// namespace without a path stays: a container of its own). Other
// namespaces with a path become fresh ones in the guest, so a pod's
// containers do not share IPC or PIDs; the pod's IPC sysctls (podSysctls,
// from the sandbox's spec) are set in each container's instead.
func guestSpec(raw []byte, spec *specs.Spec, podSysctls map[string]string) ([]byte, error) {
	if spec.Linux == nil || (len(podSysctls) == 0 && !slices.ContainsFunc(spec.Linux.Namespaces, func(ns specs.LinuxNamespace) bool { return ns.Path != "" })) {
		return raw, nil
	}
	s := *spec
	l := *spec.Linux
	l.Namespaces = nil
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace || ns.Path == "" {
			l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: ns.Type})
		}
	}
	sysctls := map[string]string{}
	for k, v := range podSysctls {
		sysctls[k] = v
	}
	for k, v := range spec.Linux.Sysctl {
		if podNetNS(spec) == "" || !isNetSysctl(k) {
			sysctls[k] = v // the container's own value wins
		}
	}
	l.Sysctl = nil
	if len(sysctls) > 0 {
		l.Sysctl = sysctls
	}
	s.Linux = &l
	out, err := json.Marshal(&s)
	if err != nil {
		return nil, fmt.Errorf("guest spec: %w", err)
	}
	return out, nil
}

func isNetSysctl(k string) bool { return strings.HasPrefix(k, "net.") }

// splitSysctls separates a pod spec's network sysctls, which the guest sets
// for the pod's network, from the IPC ones, which go into each container.
func splitSysctls(spec *specs.Spec) (network, other map[string]string) {
	if spec.Linux == nil {
		return nil, nil
	}
	for k, v := range spec.Linux.Sysctl {
		m := &other
		if isNetSysctl(k) {
			m = &network
		}
		if *m == nil {
			*m = map[string]string{}
		}
		(*m)[k] = v
	}
	return network, other
}

// podDNS reads the name servers and search domains from the resolv.conf the
// spec bind-mounts at /etc/resolv.conf (CRI writes one per pod). No such
// mount means no DNS configuration, not an error.
func podDNS(spec *specs.Spec) (servers, searches []string, err error) {
	for _, m := range spec.Mounts {
		if m.Destination != "/etc/resolv.conf" || m.Source == "" {
			continue
		}
		f, err := os.Open(m.Source)
		if err != nil {
			return nil, nil, fmt.Errorf("pod resolv.conf: %w", err)
		}
		defer f.Close()
		servers, searches, err = parseResolvConf(f)
		if err != nil {
			return nil, nil, fmt.Errorf("pod resolv.conf %s: %w", m.Source, err)
		}
		return servers, searches, nil
	}
	return nil, nil, nil
}

// parseResolvConf takes the nameserver and search lines of a resolv.conf
// (resolv.conf(5)); other options are the guest's business. Hand-written:
// the parsers in Go libraries (docker's libnetwork/resolvconf, miekg/dns)
// would be new dependencies for two keywords.
func parseResolvConf(r io.Reader) (servers, searches []string, err error) {
	raw, err := io.ReadAll(io.LimitReader(r, maxResolvConfSize+1))
	if err != nil {
		return nil, nil, err
	}
	if len(raw) > maxResolvConfSize {
		return nil, nil, fmt.Errorf("larger than %d bytes", maxResolvConfSize)
	}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(make([]byte, 0, 4096), maxResolvConfSize)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			if net.ParseIP(f[1]) == nil {
				return nil, nil, fmt.Errorf("nameserver %q is not an IP address", f[1])
			}
			if len(servers) < maxDNSServers {
				servers = append(servers, f[1])
			}
		case "search", "domain":
			// The last search or domain line wins (resolv.conf(5)).
			searches = f[1:]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if len(searches) > maxDNSSearches {
		return nil, nil, fmt.Errorf("%d search domains, limit is %d", len(searches), maxDNSSearches)
	}
	return servers, searches, nil
}
