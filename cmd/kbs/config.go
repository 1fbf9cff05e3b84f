package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/agnivade/levenshtein"
	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"

	"github.com/cloak-containers/cloak/api/adminapi"
	"github.com/cloak-containers/cloak/kbs/adminauth"
)

// The --config file is TOML, Trustee's KBS configuration format too. Its
// keys are the long names of the flags, dashes included (admin-public-key),
// found through the command's flag set, so a flag added to newCommand has
// its key without any code here. Repeatable flags take lists, booleans
// true/false, numbers numbers, everything else (durations, sizes, paths) a
// quoted string. A flag given on the command line wins over the file.

// maxConfigSize bounds the file: a kbs configuration is a few lines.
const maxConfigSize = 1 << 20

// notSettings are flags without a key: the file cannot name another file,
// and help and version are actions, not settings.
var notSettings = map[string]bool{"config": true, "help": true, "version": true}

// liveSettings are the keys a reload (SIGHUP) applies to the running KBS;
// a change to any other key is logged as needing a restart.
var liveSettings = map[string]bool{"admin-public-key": true, "auditor-public-key": true}

// configFile is the --config flag and what the start-up made of it.
type configFile struct {
	path       string
	flags      *pflag.FlagSet  // the running command's flags, completed from the file
	cli        map[string]bool // flags given on the command line: they win over the file
	overridden []string        // keys of the file the command line overrode
	applied    int             // keys of the file applied at the start
}

// addConfigFlag registers --config on f.
func addConfigFlag(f *pflag.FlagSet) *configFile {
	c := &configFile{}
	f.StringVar(&c.path, "config", "", `TOML file of settings, one key per flag without the dashes in front (admin-public-key = ["alice.pub"]); flags on the command line win; SIGHUP reloads the admin and auditor keys`)
	return c
}

// load completes fs, as parsed from the command line, with the settings of
// the file; it runs before any other check of the flags.
func (c *configFile) load(fs *pflag.FlagSet) error {
	c.flags, c.cli = fs, map[string]bool{}
	fs.Visit(func(f *pflag.Flag) { c.cli[f.Name] = true })
	if c.path == "" {
		return nil
	}
	settings, err := readConfig(c.path)
	if err != nil {
		return err
	}
	c.overridden, err = applySettings(fs, settings, c.cli)
	if err != nil {
		return fmt.Errorf("--config %s: %w", c.path, err)
	}
	c.applied = len(settings) - len(c.overridden)
	return nil
}

// readConfig reads and parses the file at path.
func readConfig(path string) (map[string]any, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("--config: read %s: %w", path, err)
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("--config %s: larger than %d bytes; a kbs configuration is a few lines of key = value", path, maxConfigSize)
	}
	settings, err := parseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return settings, nil
}

// parseConfig parses TOML, saying where a syntax error is.
func parseConfig(data []byte) (map[string]any, error) {
	settings := map[string]any{}
	if err := toml.Unmarshal(data, &settings); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return nil, fmt.Errorf("line %d, column %d: %s (the file is TOML: key = \"value\", key = [\"a\", \"b\"], key = true)", row, col, strings.TrimPrefix(de.Error(), "toml: "))
		}
		return nil, fmt.Errorf("not TOML: %w", err)
	}
	return settings, nil
}

// applySettings sets the flags of fs that settings name, except those in
// skip (given on the command line), which it returns. Every mistake of the
// file is reported, not only the first.
func applySettings(fs *pflag.FlagSet, settings map[string]any, skip map[string]bool) (skipped []string, err error) {
	var mistakes []string
	for _, key := range slices.Sorted(maps.Keys(settings)) {
		f := fs.Lookup(key)
		switch {
		case notSettings[key]:
			mistakes = append(mistakes, fmt.Sprintf("key %q is not a setting: --%s exists only on the command line", key, key))
		case f == nil:
			mistakes = append(mistakes, fmt.Sprintf("unknown key %q; did you mean %q? (the keys are the long flag names of kbs --help)", key, nearestKey(fs, key)))
		case skip[key]:
			skipped = append(skipped, key)
		default:
			if err := setFlag(f, settings[key]); err != nil {
				mistakes = append(mistakes, fmt.Sprintf("key %q: %v", key, err))
			}
		}
	}
	switch len(mistakes) {
	case 0:
		return skipped, nil
	case 1:
		return nil, errors.New(mistakes[0])
	}
	return nil, fmt.Errorf("%d mistakes:\n  %s", len(mistakes), strings.Join(mistakes, "\n  "))
}

// nearestKey is the valid key closest to key in edit distance, an
// underscore counting as a dash.
func nearestKey(fs *pflag.FlagSet, key string) string {
	key = strings.ReplaceAll(key, "_", "-")
	best, bestDist := "", -1
	fs.VisitAll(func(f *pflag.Flag) {
		if notSettings[f.Name] {
			return
		}
		if d := levenshtein.ComputeDistance(key, f.Name); bestDist < 0 || d < bestDist {
			best, bestDist = f.Name, d
		}
	})
	return best
}

// setFlag sets f from a TOML value as if it had been given on the command
// line: a list for a repeatable flag (each item once), a scalar otherwise.
func setFlag(f *pflag.Flag, v any) error {
	typ := f.Value.Type()
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		elem := strings.TrimSuffix(strings.TrimSuffix(typ, "Slice"), "Array")
		list, ok := v.([]any)
		if !ok {
			ex := example(elem)
			if s, isString := v.(string); isString {
				ex = strconv.Quote(s)
			}
			return fmt.Errorf("%s is not a list; the flag is repeatable: write %s = [%s]", describe(v), f.Name, ex)
		}
		items := make([]string, len(list))
		for i, item := range list {
			s, err := scalar(elem, item)
			if err != nil {
				return fmt.Errorf("item %d: %w", i+1, err)
			}
			items[i] = s
		}
		if err := sv.Replace(items); err != nil {
			return fmt.Errorf("%q: %w", items, err)
		}
	} else {
		s, err := scalar(typ, v)
		if err != nil {
			return err
		}
		if err := f.Value.Set(s); err != nil {
			return fmt.Errorf("%q: %w", s, err)
		}
	}
	// What cobra's required-flag and flag-group checks look at.
	f.Changed = true
	return nil
}

// scalar is the command-line text of a TOML value for a flag of type typ
// (pflag's Value.Type names).
func scalar(typ string, v any) (string, error) {
	switch typ {
	case "bool":
		if b, ok := v.(bool); ok {
			return strconv.FormatBool(b), nil
		}
		return "", fmt.Errorf("%s is not true or false", describe(v))
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64", "float32", "float64", "count":
		switch n := v.(type) {
		case int64:
			return strconv.FormatInt(n, 10), nil
		case float64:
			return strconv.FormatFloat(n, 'g', -1, 64), nil
		}
		return "", fmt.Errorf("%s is not a number", describe(v))
	}
	if s, ok := v.(string); ok {
		return s, nil
	}
	return "", fmt.Errorf("%s is not a string: write it in quotes, like %s", describe(v), example(typ))
}

// describe names a TOML value in an error.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case bool, int64, float64:
		return fmt.Sprint(v)
	case []any:
		return "a list"
	case map[string]any:
		return "a table"
	}
	return fmt.Sprintf("the %T %v", v, v)
}

// example is a value of type typ as the file writes it.
func example(typ string) string {
	switch typ {
	case "bool":
		return "true"
	case "duration":
		return `"5m"`
	case "int", "int64", "uint", "float64":
		return "10"
	}
	return `"..."`
}

// keySetter is what a reload changes in the running KBS: *server.Server.
type keySetter interface {
	SetAdminKeys(admin, auditor []ed25519.PublicKey) (added, removed []adminauth.Key)
}

// watch logs what the start took from the file, then reloads the
// configuration on each SIGHUP until ctx ends or stop is called; stop waits
// for a reload under way. A nil c (run called without the command, in
// tests) watches nothing.
func (c *configFile) watch(ctx context.Context, log *slog.Logger, srv keySetter) (stop func()) {
	if c == nil {
		return func() {}
	}
	if c.path != "" {
		log.Info("configuration file loaded; SIGHUP reloads it", "file", c.path, "keys_applied", c.applied)
	}
	if len(c.overridden) > 0 {
		log.Info("the command line overrides these keys of the configuration file", "file", c.path, "keys", c.overridden)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				c.reload(log, srv)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}

// reload re-reads the file (and the key files it and the command line
// name), applies the admin and auditor keys and warns about every other
// changed setting. A file that does not load changes nothing.
func (c *configFile) reload(log *slog.Logger, srv keySetter) {
	log.Info("SIGHUP: reloading the configuration", "file", c.path)
	next, admins, auditors, err := c.next()
	if err != nil {
		log.Error("configuration reload refused; the previous settings stay in force", "file", c.path, "error", err.Error())
		return
	}
	for _, name := range changedSettings(c.flags, next) {
		log.Warn("setting changed, but it takes effect only at a restart of kbs; until then the running value stays",
			"key", name, "running", flagText(c.flags.Lookup(name)), "configured", flagText(next.Lookup(name)))
	}
	added, removed := srv.SetAdminKeys(admins, auditors)
	for _, role := range []string{adminapi.RoleAdmin, adminapi.RoleAuditor} {
		a, r := fingerprintsOf(added, role), fingerprintsOf(removed, role)
		if len(a)+len(r) > 0 {
			log.Info("admin keys changed", "role", role, "added", a, "removed", r)
		}
	}
	if len(admins)+len(auditors) == 0 {
		log.Warn("no admin or auditor key left: the admin API is disabled until one is added")
	}
	log.Info("configuration reloaded", "file", c.path, "admin_keys", len(admins), "auditor_keys", len(auditors),
		"keys_added", len(added), "keys_removed", len(removed))
}

// next is the configuration a restart would use now: the command line's
// flags, the file, and the keys of the files they name.
func (c *configFile) next() (fs *pflag.FlagSet, admins, auditors []ed25519.PublicKey, err error) {
	fs = newCommand().Flags()
	for name := range c.cli {
		if from, to := c.flags.Lookup(name), fs.Lookup(name); from != nil && to != nil {
			if err := copyFlag(from, to); err != nil {
				return nil, nil, nil, fmt.Errorf("--%s: %w", name, err)
			}
		}
	}
	if c.path != "" {
		settings, err := readConfig(c.path)
		if err != nil {
			return nil, nil, nil, err
		}
		if _, err := applySettings(fs, settings, c.cli); err != nil {
			return nil, nil, nil, fmt.Errorf("--config %s: %w", c.path, err)
		}
	}
	adminPaths, _ := fs.GetStringArray("admin-public-key")
	if admins, err = loadAdminKeys("admin-public-key", adminPaths); err != nil {
		return nil, nil, nil, err
	}
	auditorPaths, _ := fs.GetStringArray("auditor-public-key")
	if auditors, err = loadAdminKeys("auditor-public-key", auditorPaths); err != nil {
		return nil, nil, nil, err
	}
	return fs, admins, auditors, nil
}

// copyFlag gives to the value of from.
func copyFlag(from, to *pflag.Flag) error {
	if sv, ok := from.Value.(pflag.SliceValue); ok {
		return to.Value.(pflag.SliceValue).Replace(sv.GetSlice())
	}
	return to.Value.Set(from.Value.String())
}

// changedSettings names the settings other than the live ones whose value
// differs between the running flags and next.
func changedSettings(running, next *pflag.FlagSet) []string {
	var names []string
	next.VisitAll(func(f *pflag.Flag) {
		if cur := running.Lookup(f.Name); cur != nil && !notSettings[f.Name] && !liveSettings[f.Name] && flagText(cur) != flagText(f) {
			names = append(names, f.Name)
		}
	})
	return names
}

// flagText is a flag's value for comparisons and logs.
func flagText(f *pflag.Flag) string {
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return fmt.Sprintf("%q", sv.GetSlice())
	}
	return f.Value.String()
}

func fingerprintsOf(keys []adminauth.Key, role string) []string {
	out := []string{}
	for _, k := range keys {
		if k.Role == role {
			out = append(out, adminauth.Fingerprint(k.Public))
		}
	}
	return out
}
