// Command trivialinit is the floor of the boot benchmark: a PID 1 that does
// the least a guest must do to answer on the agent channel — mount sysfs and
// devtmpfs, find the virtio-serial port named cloak.agent, answer the host's
// hello line with the welcome (as cloak-agent does) and write "ready" — and
// then powers off. Built statically by the benchmark.
package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	_ = os.MkdirAll("/sys", 0o755)
	_ = os.MkdirAll("/dev", 0o755)
	_ = syscall.Mount("sysfs", "/sys", "sysfs", 0, "")
	_ = syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	names, _ := filepath.Glob("/sys/class/virtio-ports/*/name")
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil || strings.TrimSpace(string(b)) != "cloak.agent" {
			continue
		}
		port := filepath.Base(filepath.Dir(n))
		if f, err := os.OpenFile("/dev/"+port, os.O_RDWR, 0); err == nil {
			// Lines until "CLOAK-AGENT-HELLO <token>"; while the host is
			// away reads return 0, so retry.
			var line []byte
			b := make([]byte, 1)
			for {
				n, _ := f.Read(b)
				if n == 0 {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if b[0] != '\n' {
					line = append(line, b[0])
					continue
				}
				if tok, ok := strings.CutPrefix(string(line), "CLOAK-AGENT-HELLO "); ok {
					_, _ = f.WriteString("CLOAK-AGENT-WELCOME " + tok + "\n")
					break
				}
				line = line[:0]
			}
			_, _ = f.WriteString("ready\n")
			// Give the host time to read before the port disappears.
			time.Sleep(2 * time.Second)
			f.Close()
		}
	}
	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}
