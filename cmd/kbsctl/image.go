package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/api/kbstypes"
	"github.com/cloak-containers/cloak/kbs/imagecrypt"
)

func (a *app) imageCmd() *cobra.Command {
	cmd := groupCmd("image", "Encrypt container images so that only attested guests can run them", "",
		"  kbsctl image encrypt --key-id kbs:///default/image-key/demo --kek image.kek SRC DST")
	var keyID, kek, platform string
	var insecure bool
	encrypt := &cobra.Command{
		Use:   "encrypt SRC DST --key-id kbs:///REPO/TYPE/TAG --kek FILE",
		Short: "Copy a registry image with every layer encrypted for Cloak",
		Long: `encrypt copies the registry image SRC to DST with every layer encrypted by
ocicrypt, as skopeo copy --encryption-key provider:attestation-agent:... does
through kbsctl keyprovider serve, but needing neither (Debian 12's skopeo
cannot use key providers). No KBS is contacted: --url and --admin-key are not
needed.

Each layer gets a fresh random key (AES-256-CTR with HMAC-SHA256). That key is
sealed with the 32-byte KEK in --kek (AES-256-GCM) and stored, with --key-id, in
the layer annotation org.opencontainers.image.enc.keys.provider.attestation-agent.
A guest's attestation agent fetches the KEK from the KBS under --key-id after
attesting, so the KBS must store the same KEK there:

  kbsctl resource set default/image-key/demo --file image.kek

The image config, with the plaintext layers' diff_ids, is copied unchanged: the
guest checks every layer it decrypts. DST is written as one OCI image; when SRC
is an index (a multi-platform image), --platform chooses which image.

SRC is only read: the plaintext image stays wherever SRC is. Delete it or keep
that registry private if the image must stay confidential.

SRC and DST are registry references, HOST[:PORT]/REPO:TAG (SRC may also be
HOST[:PORT]/REPO@sha256:DIGEST). Credentials come from the Docker config
(~/.docker/config.json). --insecure allows plain HTTP; registries on localhost,
loopback and private addresses are tried over HTTPS, then plain HTTP, anyway.

Progress goes to standard error, one line per layer; the result
(DST's repository @ the pushed manifest digest) to standard output.`,
		Example: `  head -c 32 /dev/urandom > image.kek
  kbsctl resource set default/image-key/demo --file image.kek
  kbsctl image encrypt --insecure --key-id kbs:///default/image-key/demo --kek image.kek \
    127.0.0.1:5000/demo/hello:plain 127.0.0.1:5000/demo/hello:encrypted
  kbsctl -o json image encrypt --platform linux/arm64 --key-id kbs:///default/image-key/demo \
    --kek image.kek registry.example/app:1.0 registry.example/app:1.0-encrypted`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyID == "" {
				return usagef("--key-id is required: kbs:///REPOSITORY/TYPE/TAG, where the KBS serves the KEK")
			}
			if _, _, err := kbstypes.ParseResourceURI(keyID); err != nil {
				return usagef("--key-id %q: %v", keyID, err)
			}
			if kek == "" {
				return usagef("--kek FILE is required: a file of 32 random bytes (head -c 32 /dev/urandom > image.kek)")
			}
			plat, err := v1.ParsePlatform(platform)
			if err != nil || plat.OS == "" || plat.Architecture == "" {
				return usagef("--platform %q: want OS/ARCH[/VARIANT], e.g. linux/amd64", platform)
			}
			var nameOpts []name.Option
			if insecure {
				nameOpts = append(nameOpts, name.Insecure)
			}
			var refs [2]name.Reference
			for i, what := range []string{"SRC", "DST"} {
				if refs[i], err = name.ParseReference(args[i], nameOpts...); err != nil {
					return usagef("%s %q: %v (want HOST[:PORT]/REPO[:TAG])", what, args[i], err)
				}
			}
			res, err := imagecrypt.Encrypt(cmd.Context(), refs[0], refs[1], imagecrypt.Options{
				KeyID:    keyID,
				KEKFile:  kek,
				Platform: plat,
				Remote:   []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)},
				Progress: func(i, n int, l imagecrypt.Layer) {
					fmt.Fprintf(a.stderr, "layer %d/%d %s %s encrypted in %.2f s\n",
						i+1, n, shortDigest(l.Digest), sizeString(l.Size), l.Duration.Seconds())
				},
			})
			if err != nil {
				return registryError(err)
			}
			return a.emit(res, func(w io.Writer) { fmt.Fprintf(w, "pushed %s\n", res.Image) })
		},
	}
	f := encrypt.Flags()
	f.StringVar(&keyID, "key-id", "", "where the KBS serves the KEK: kbs:///REPOSITORY/TYPE/TAG")
	f.StringVar(&kek, "kek", "", "file holding the 32-byte key-encryption key")
	f.StringVar(&platform, "platform", imagecrypt.DefaultPlatform.String(), "image to pick when SRC is an index: OS/ARCH[/VARIANT]")
	f.BoolVar(&insecure, "insecure", false, "allow plain HTTP to the registries (e.g. one on loopback)")
	cmd.AddCommand(encrypt)
	return cmd
}

// registryError passes on an encryption failure without its error chain:
// kbsctl's hints explain network errors as an unreachable KBS (--url), which
// this command does not use. It adds a registry hint instead.
func registryError(err error) error {
	msg := strings.ReplaceAll(err.Error(), "http: server gave HTTP response to HTTPS client",
		"the registry answers in plain HTTP (pass --insecure to allow it)")
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		msg += "\n  is the registry running, and are HOST:PORT in the reference right?"
	case strings.Contains(msg, "MANIFEST_UNKNOWN") || strings.Contains(msg, "NAME_UNKNOWN"):
		msg += "\n  check the reference: the registry has no such image"
	}
	return errors.New(msg)
}

func shortDigest(h v1.Hash) string {
	if len(h.Hex) > 12 {
		return h.Algorithm + ":" + h.Hex[:12]
	}
	return h.String()
}

func sizeString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
