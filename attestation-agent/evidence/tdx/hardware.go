package tdx

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	tsmreport "github.com/google/go-configfs-tsm/report"
	"github.com/google/go-tdx-guest/client"

	"github.com/cloak-containers/cloak/api/kbstypes"
)

// configfsSource gets quotes through configfs-tsm (the tdx-guest driver
// registers the tdx_guest provider).
type configfsSource struct{}

func (configfsSource) Name() string { return "configfs-tsm" }

func (configfsSource) Quote(_ context.Context, rd [kbstypes.ReportDataSize]byte) ([]byte, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, err
	}
	resp, err := tsmreport.Get(c, &tsmreport.Request{InBlob: rd[:]})
	if err != nil {
		return nil, err
	}
	if resp.Provider != "tdx_guest" {
		return nil, fmt.Errorf("configfs-tsm provider is %q, not tdx_guest: this is not a TDX guest", resp.Provider)
	}
	return resp.OutBlob, nil
}

// deviceSource gets quotes from /dev/tdx_guest (kernels without
// configfs-tsm).
type deviceSource struct{ path string }

func (s deviceSource) Name() string { return filepath.Base(s.path) }

func (s deviceSource) Quote(_ context.Context, rd [kbstypes.ReportDataSize]byte) ([]byte, error) {
	d := &client.LinuxDevice{}
	if err := d.Open(s.path); err != nil {
		return nil, err
	}
	defer d.Close()
	return client.GetRawQuote(d, rd)
}
