// Package sbom writes an SPDX 2.3 software bill of materials (JSON) of Go
// binaries from the module list the Go linker records in each of them
// (debug/buildinfo): what `go version -m` prints, as SPDX packages.
//
// Hand-written because the SPDX Go libraries (spdx/tools-golang) are not
// among the modules this project can fetch, and the part needed here is a
// small, fixed JSON shape: one package per module, DEPENDS_ON relationships.
package sbom

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Document is the subset of SPDX 2.3 JSON this package writes.
type Document struct {
	SPDXVersion       string         `json:"spdxVersion"`
	DataLicense       string         `json:"dataLicense"`
	SPDXID            string         `json:"SPDXID"`
	Name              string         `json:"name"`
	DocumentNamespace string         `json:"documentNamespace"`
	CreationInfo      CreationInfo   `json:"creationInfo"`
	Packages          []Package      `json:"packages"`
	Relationships     []Relationship `json:"relationships"`
}

// CreationInfo says when and by what the document was made.
type CreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

// Package is one binary or one Go module.
type Package struct {
	Name             string        `json:"name"`
	SPDXID           string        `json:"SPDXID"`
	VersionInfo      string        `json:"versionInfo,omitempty"`
	DownloadLocation string        `json:"downloadLocation"`
	FilesAnalyzed    bool          `json:"filesAnalyzed"`
	PrimaryPurpose   string        `json:"primaryPurpose,omitempty"`
	Checksums        []Checksum    `json:"checksums,omitempty"`
	ExternalRefs     []ExternalRef `json:"externalRefs,omitempty"`
	Comment          string        `json:"comment,omitempty"`
}

// Checksum of a binary file.
type Checksum struct {
	Algorithm     string `json:"algorithm"`
	ChecksumValue string `json:"checksumValue"`
}

// ExternalRef is a package URL (purl).
type ExternalRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

// Relationship links two SPDX elements.
type Relationship struct {
	SPDXElementID      string `json:"spdxElementId"`
	RelationshipType   string `json:"relationshipType"`
	RelatedSPDXElement string `json:"relatedSpdxElement"`
}

// Options name the document.
type Options struct {
	Name    string    // e.g. "cloak"
	Version string    // e.g. the git describe of the release
	Created time.Time // fixed for a reproducible document (the commit time)
	Tool    string    // creator, e.g. "cloak-image v1.2.3"
}

var idUnsafe = regexp.MustCompile(`[^A-Za-z0-9.-]+`)

func spdxID(kind, name, version string) string {
	return "SPDXRef-" + kind + "-" + strings.Trim(idUnsafe.ReplaceAllString(name+"-"+version, "-"), "-")
}

// New reads each binary's build information and returns the document: a
// package per binary (with its SHA-256), a package per module any of them
// links (once, at the version linked), the Go toolchain, and DEPENDS_ON
// relationships from each binary to what it links. The same binaries and
// options give the same bytes.
func New(opts Options, binaries []string) (*Document, error) {
	if opts.Name == "" || opts.Version == "" {
		return nil, errors.New("sbom: a document name and version are required")
	}
	if len(binaries) == 0 {
		return nil, errors.New("sbom: no binaries given")
	}
	doc := &Document{
		SPDXVersion: "SPDX-2.3",
		DataLicense: "CC0-1.0",
		SPDXID:      "SPDXRef-DOCUMENT",
		Name:        opts.Name + "-" + opts.Version,
		CreationInfo: CreationInfo{
			Created:  opts.Created.UTC().Format(time.RFC3339),
			Creators: []string{"Tool: " + opts.Tool},
		},
	}
	modules := map[string]Package{}
	var rels []Relationship
	digests := sha256.New()
	for _, bin := range binaries {
		info, err := buildinfo.ReadFile(bin)
		if err != nil {
			return nil, fmt.Errorf("sbom: %s: not a Go binary with build information: %w", bin, err)
		}
		sum, err := fileSHA256(bin)
		if err != nil {
			return nil, fmt.Errorf("sbom: %w", err)
		}
		fmt.Fprintf(digests, "%s %s\n", filepath.Base(bin), sum)
		name := filepath.Base(bin)
		id := spdxID("Binary", name, opts.Version)
		doc.Packages = append(doc.Packages, Package{
			Name: name, SPDXID: id, VersionInfo: opts.Version, DownloadLocation: "NOASSERTION",
			PrimaryPurpose: "APPLICATION",
			Checksums:      []Checksum{{Algorithm: "SHA256", ChecksumValue: sum}},
			Comment:        "main package " + info.Path + ", built with " + info.GoVersion,
		})
		rels = append(rels, Relationship{"SPDXRef-DOCUMENT", "DESCRIBES", id})
		deps := []*debugModule{{info.Main.Path, info.Main.Version, info.Main.Sum}}
		for _, d := range info.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			deps = append(deps, &debugModule{d.Path, d.Version, d.Sum})
		}
		deps = append(deps, &debugModule{"golang.org/toolchain", info.GoVersion, ""})
		for _, m := range deps {
			if m.path == "" {
				continue
			}
			mid := spdxID("Module", m.path, m.version)
			if _, ok := modules[mid]; !ok {
				p := Package{
					Name: m.path, SPDXID: mid, VersionInfo: m.version, DownloadLocation: "NOASSERTION",
					PrimaryPurpose: "LIBRARY",
				}
				if m.version != "" && m.version != "(devel)" {
					p.ExternalRefs = []ExternalRef{{"PACKAGE-MANAGER", "purl", "pkg:golang/" + m.path + "@" + m.version}}
				}
				if m.sum != "" {
					p.Comment = "go.sum " + m.sum
				}
				modules[mid] = p
			}
			rels = append(rels, Relationship{id, "DEPENDS_ON", mid})
		}
	}
	ids := make([]string, 0, len(modules))
	for id := range modules {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		doc.Packages = append(doc.Packages, modules[id])
	}
	doc.Relationships = rels
	// A namespace unique to these binaries, the same for the same bytes.
	doc.DocumentNamespace = "https://github.com/cloak-containers/cloak/spdx/" + opts.Name + "-" + opts.Version + "-" +
		hex.EncodeToString(digests.Sum(nil))[:16]
	return doc, nil
}

type debugModule struct{ path, version, sum string }

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Marshal is the document as indented JSON with a final newline.
func (d *Document) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
