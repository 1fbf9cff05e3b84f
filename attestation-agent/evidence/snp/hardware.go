package snp

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	tsmreport "github.com/google/go-configfs-tsm/report"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
)

// configfsSNP reports whether configfs-tsm is mounted and the sev-guest
// platform device (which registers the SNP provider) exists. The provider's
// name is only known once a report entry exists; Report checks it.
func configfsSNP(p Paths) bool {
	return exists(p.ConfigfsTSM) && exists(p.SevPlatform)
}

// configfsSource gets reports through configfs-tsm.
type configfsSource struct{}

func (configfsSource) Name() string { return "configfs-tsm" }

func (configfsSource) Report(_ context.Context, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, nil, err
	}
	resp, err := tsmreport.Get(c, &tsmreport.Request{InBlob: rd[:], GetAuxBlob: true})
	if err != nil {
		return nil, nil, err
	}
	if resp.Provider != "sev_guest" {
		return nil, nil, fmt.Errorf("configfs-tsm provider is %q, not sev_guest: this is not an SEV-SNP guest", resp.Provider)
	}
	return resp.OutBlob, resp.AuxBlob, nil
}

// sevGuestSource gets extended reports from /dev/sev-guest.
type sevGuestSource struct{ path string }

func (s sevGuestSource) Name() string { return filepath.Base(s.path) }

func (s sevGuestSource) Report(_ context.Context, rd [abi.ReportDataSize]byte) ([]byte, []byte, error) {
	d := &client.LinuxDevice{}
	if err := d.Open(s.path); err != nil {
		return nil, nil, err
	}
	defer d.Close()
	//lint:ignore SA1019 the QuoteProvider API replaces the device handling around this call, a change of its own; this call is still supported
	return client.GetRawExtendedReport(d, rd)
}
