// Command kbsctl administers a Cloak Key Broker Service: resources,
// policies, reference values and the audit log, plus admin key generation
// and the host-side ocicrypt key provider used to encrypt images.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newApp(os.Getenv, os.Stdin, os.Stdout, os.Stderr).execute(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
