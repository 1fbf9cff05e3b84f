package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/cloak-containers/cloak/internal/logging"
	"github.com/cloak-containers/cloak/kbs/adminclient"
	"github.com/cloak-containers/cloak/kbs/keywrap"
)

func (a *app) keygenCmd() *cobra.Command {
	var priv, pub string
	var force bool
	cmd := &cobra.Command{
		Use:   "keygen --private-key FILE --public-key FILE",
		Short: "Create an Ed25519 admin key pair",
		Long: `keygen writes a new Ed25519 admin key pair: the private key as PKCS#8 PEM
(mode 0600) for kbsctl --admin-key, the public key as PKIX PEM for the KBS's
--admin-public-key. Existing files are kept unless --force is given.`,
		Example: `  kbsctl keygen --private-key ~/.config/cloak/admin.key --public-key admin.pub
  kbs --admin-public-key admin.pub ...`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if priv == "" || pub == "" {
				return usagef("keygen needs both --private-key FILE and --public-key FILE")
			}
			if _, err := adminclient.GenerateKeyFiles(priv, pub, force); err != nil {
				return err
			}
			return a.emit(map[string]string{"private_key": priv, "public_key": pub}, func(w io.Writer) {
				fmt.Fprintf(w, "wrote private key %s (mode 0600) and public key %s\n", priv, pub)
				fmt.Fprintf(w, "start the KBS with --admin-public-key %s and run kbsctl with --admin-key %s\n", pub, priv)
			})
		},
	}
	cmd.Flags().StringVar(&priv, "private-key", "", "where to write the private key")
	cmd.Flags().StringVar(&pub, "public-key", "", "where to write the public key")
	cmd.Flags().BoolVar(&force, "force", false, "overwrite existing key files")
	return cmd
}

func (a *app) keyproviderCmd() *cobra.Command {
	cmd := groupCmd("keyprovider", "Run the ocicrypt key provider that encrypts images for Cloak", "",
		"  kbsctl keyprovider serve --socket /run/cloak-keyprovider.sock")
	var socket string
	var logOpts *logging.Options // set with the flags below
	serve := &cobra.Command{
		Use:   "serve --socket PATH",
		Short: "Serve the attestation-agent key provider on a unix socket",
		Long: `serve runs an ocicrypt key provider (gRPC, provider name attestation-agent) that
wraps each layer key with a 32-byte KEK from a file. Store the same KEK in the
KBS under the key id, so attested guests can unwrap it. Runs until interrupted.`,
		Example: `  head -c 32 /dev/urandom > image.kek
  kbsctl resource set default/image-kek/1 --file image.kek
  kbsctl keyprovider serve --socket /run/cloak-keyprovider.sock &
  cat > ocicrypt.conf <<EOF
  {"key-providers": {"attestation-agent": {"grpc": "unix:///run/cloak-keyprovider.sock"}}}
  EOF
  OCICRYPT_KEYPROVIDER_CONFIG=ocicrypt.conf skopeo copy \
    --encryption-key "provider:attestation-agent:keypath=$PWD/image.kek;kid=kbs:///default/image-kek/1" \
    docker://docker.io/library/busybox:latest oci:busybox-encrypted`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				return usagef("--socket PATH is required")
			}
			log, err := logOpts.New(a.stderr)
			if err != nil {
				return usageError{err}
			}
			log.Info("serving ocicrypt key provider", "provider", keywrap.ProviderName, "socket", "unix://"+socket)
			return keywrap.Serve(cmd.Context(), socket, log)
		},
	}
	serve.Flags().StringVar(&socket, "socket", "", "unix socket to listen on")
	logOpts = logging.Flags(serve.Flags(), logging.Text)
	cmd.AddCommand(serve)
	return cmd
}

func (a *app) tokenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "token",
		Short: "Print a fresh admin token (valid 5 minutes) for calling the admin API with curl",
		Example: `  curl --cacert DATA_DIR/tls/cert.pem \
    -H "Authorization: Bearer $(kbsctl token --admin-key admin.key)" \
    https://127.0.0.1:8080/kbs/v0/resources`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if a.adminKey == "" {
				return usagef("no admin key: pass --admin-key FILE or set KBSCTL_ADMIN_KEY")
			}
			key, err := adminclient.LoadPrivateKey(a.adminKey)
			if err != nil {
				return err
			}
			tok, err := adminclient.MintToken(key, a.role, time.Now())
			if err != nil {
				return err
			}
			return a.emit(map[string]string{"token": tok}, func(w io.Writer) { fmt.Fprintln(w, tok) })
		},
	}
}
