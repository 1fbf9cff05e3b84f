// Package config is the shim's runtime configuration: one TOML file per
// containerd runtime handler, named by containerd's ConfigPath runtime option.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/cloak-containers/cloak/shim/hypervisor/qemu"
)

// Defaults, documented in shim/README.md.
const (
	DefaultImageDir            = "/usr/share/cloak/image"
	DefaultRunDir              = "/run/cloak"
	DefaultAgentTimeoutSeconds = 180
	// maxFileSize bounds the config file: it is read by a root process.
	maxFileSize = 1 << 20
)

// Config is the content of a configuration file; zero values mean the
// documented defaults (see WithDefaults).
type Config struct {
	// ImageDir holds the guest image: vmlinuz, initrd.img, manifest.json
	// (from `make image` / cloak-image build).
	ImageDir string `toml:"image_dir"`
	// Accel is auto | kvm | tcg.
	Accel     string `toml:"accel"`
	VCPUs     int    `toml:"vcpus"`
	MemoryMiB int    `toml:"memory_mib"`
	// RunDir holds one directory per VM (QMP and agent sockets); keep it
	// short: unix socket paths are limited to 108 bytes.
	RunDir string `toml:"run_dir"`
	// ConsoleLogDir receives the guest console as <namespace>-<id>.log;
	// empty: console.log in the task's bundle (removed with the task).
	ConsoleLogDir string `toml:"console_log_dir"`
	// AgentTimeoutSeconds bounds boot until the agent answers, and the
	// image pull.
	AgentTimeoutSeconds int `toml:"agent_timeout_seconds"`

	Registry Registry `toml:"registry"`
}

// Registry configures how the guest reaches registries (guest pull).
type Registry struct {
	// Insecure lists registries (host[:port]) reached over plain HTTP.
	Insecure []string `toml:"insecure"`
	// Mirrors maps a registry as written in image references to the
	// endpoint the guest uses, e.g. "127.0.0.1:5000" = "http://10.0.2.2:5000"
	// (the host's loopback as a user-mode network guest sees it).
	Mirrors map[string]string `toml:"mirrors"`
}

// Load reads a configuration file; an empty path gives the defaults.
func Load(path string) (Config, error) {
	if path == "" {
		return Config{}.WithDefaults(), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("cloak config: %w (set the runtime option ConfigPath to an existing file)", err)
	}
	defer f.Close()
	raw := make([]byte, maxFileSize+1)
	n, err := io.ReadFull(f, raw)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("cloak config %s: %w", path, err)
	}
	if n > maxFileSize {
		return Config{}, fmt.Errorf("cloak config %s: larger than %d bytes", path, maxFileSize)
	}
	c, err := Parse(raw[:n])
	if err != nil {
		return Config{}, fmt.Errorf("cloak config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes a configuration document; unknown keys are errors (a typo
// must not silently fall back to a default), then applies defaults and
// checks values.
func Parse(doc []byte) (Config, error) {
	var c Config
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return Config{}, fmt.Errorf("unknown key: %s", sm.String())
		}
		return Config{}, err
	}
	c = c.WithDefaults()
	if err := c.validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// WithDefaults fills unset keys with the documented defaults.
func (c Config) WithDefaults() Config {
	if c.ImageDir == "" {
		c.ImageDir = DefaultImageDir
	}
	if c.Accel == "" {
		c.Accel = string(qemu.AccelAuto)
	}
	if c.VCPUs == 0 {
		c.VCPUs = qemu.DefaultVCPUs
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = qemu.DefaultMemoryMiB
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
	if c.AgentTimeoutSeconds == 0 {
		c.AgentTimeoutSeconds = DefaultAgentTimeoutSeconds
	}
	return c
}

func (c Config) validate() error {
	switch qemu.Accel(c.Accel) {
	case qemu.AccelAuto, qemu.AccelKVM, qemu.AccelTCG:
	default:
		return fmt.Errorf("accel %q: want auto, kvm or tcg", c.Accel)
	}
	if c.VCPUs < 1 || c.VCPUs > 256 {
		return fmt.Errorf("vcpus %d: want 1..256", c.VCPUs)
	}
	if c.MemoryMiB < 128 || c.MemoryMiB > 1<<20 {
		return fmt.Errorf("memory_mib %d: want 128..1048576", c.MemoryMiB)
	}
	if c.AgentTimeoutSeconds < 1 {
		return fmt.Errorf("agent_timeout_seconds %d: want > 0", c.AgentTimeoutSeconds)
	}
	for _, d := range []struct{ key, dir string }{{"image_dir", c.ImageDir}, {"run_dir", c.RunDir}, {"console_log_dir", c.ConsoleLogDir}} {
		if d.dir != "" && !filepath.IsAbs(d.dir) {
			return fmt.Errorf("%s %q: want an absolute path", d.key, d.dir)
		}
	}
	return nil
}

// AgentTimeout is AgentTimeoutSeconds as a duration.
func (c Config) AgentTimeout() time.Duration {
	return time.Duration(c.AgentTimeoutSeconds) * time.Second
}
