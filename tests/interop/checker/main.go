// Command estargz-checker is the interop checker of the estargz Python
// project. It drives the Go implementation of eStargz
// (github.com/containerd/stargz-snapshotter/estargz, as packaged by Debian)
// so that the test suite can compare what the Python code writes and reads
// with what the reference implementation writes and reads.
//
// Subcommands:
//
//	estargz-checker verify [--zstdchunked] BLOB TOCDIGEST|-
//	estargz-checker build [--chunk-size N] [--level N] [--prioritized a,b,...]
//	                      [--allow-missing-prioritized] [--zstdchunked] [--procs N]
//	                      IN.tar OUT.blob
//	estargz-checker toc [--zstdchunked] BLOB
//	estargz-checker build-cs [--level N] IN.tar OUT.blob
//
// build-cs runs the containers/storage zstd:chunked writer (the one skopeo
// and podman use; Debian packages containers/storage 1.43) and prints the
// annotations it produces with the blob's size and digest.
//
// Results go to stdout as JSON (raw TOC JSON bytes for "toc"). Diagnostics
// go to stderr. Any failure exits with status 1 after printing a single
// line to stderr.
package main

import (
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	cscompressor "github.com/containers/storage/pkg/chunked/compressor"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

const progName = "estargz-checker"

const usageText = `usage:
  estargz-checker verify [--zstdchunked] BLOB TOCDIGEST|-
  estargz-checker build [--chunk-size N] [--level N] [--prioritized a,b,...]
                        [--allow-missing-prioritized] [--zstdchunked] [--procs N]
                        IN.tar OUT.blob
  estargz-checker toc [--zstdchunked] BLOB
  estargz-checker build-cs [--level N] IN.tar OUT.blob`

func main() {
	os.Exit(run(os.Args[1:]))
}

// run dispatches to a subcommand and turns every failure (including a panic
// inside the library) into a one-line message and exit status 1.
func run(args []string) (status int) {
	defer func() {
		if p := recover(); p != nil {
			fail(fmt.Errorf("internal panic: %v", p))
			status = 1
		}
	}()
	if len(args) == 0 {
		fail(errors.New("missing subcommand (verify, build, toc); see --help"))
		return 1
	}
	var err error
	switch args[0] {
	case "verify":
		err = cmdVerify(args[1:])
	case "build":
		err = cmdBuild(args[1:])
	case "toc":
		err = cmdTOC(args[1:])
	case "build-cs":
		err = cmdBuildCS(args[1:])
	case "help", "-h", "--help":
		fmt.Fprintln(os.Stderr, usageText)
		return 0
	default:
		err = fmt.Errorf("unknown subcommand %q", args[0])
	}
	if err != nil {
		fail(err)
		return 1
	}
	return 0
}

// fail prints err on stderr as exactly one line.
func fail(err error) {
	msg := strings.Join(strings.Fields(err.Error()), " ")
	fmt.Fprintf(os.Stderr, "%s: error: %s\n", progName, msg)
}

func logf(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, progName+": "+format+"\n", a...)
}

// ---------------------------------------------------------------------------
// Command-line parsing. Options may appear before, between or after the
// positional arguments, as "--name value" or "--name=value".

type options struct {
	flags map[string]bool    // known boolean options and their values
	vals  map[string]*string // known valued options; nil until given
}

func newOptions(boolNames []string, valueNames []string) *options {
	o := &options{flags: map[string]bool{}, vals: map[string]*string{}}
	for _, n := range boolNames {
		o.flags[n] = false
	}
	for _, n := range valueNames {
		o.vals[n] = nil
	}
	return o
}

func (o *options) parse(args []string) (positional []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return append(positional, args[i+1:]...), nil
		case strings.HasPrefix(a, "--"):
			name, value, hasValue := strings.Cut(a[2:], "=")
			if _, ok := o.flags[name]; ok {
				if hasValue {
					return nil, fmt.Errorf("option --%s takes no value", name)
				}
				o.flags[name] = true
				continue
			}
			if _, ok := o.vals[name]; !ok {
				return nil, fmt.Errorf("unknown option --%s", name)
			}
			if !hasValue {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("option --%s needs a value", name)
				}
				i++
				value = args[i]
			}
			v := value
			o.vals[name] = &v
		case len(a) > 1 && strings.HasPrefix(a, "-"):
			return nil, fmt.Errorf("unknown option %s", a)
		default: // includes "-" on its own
			positional = append(positional, a)
		}
	}
	return positional, nil
}

func (o *options) flag(name string) bool { return o.flags[name] }

func (o *options) intValue(name string, def int) (int, error) {
	v := o.vals[name]
	if v == nil {
		return def, nil
	}
	n, err := strconv.Atoi(*v)
	if err != nil {
		return 0, fmt.Errorf("option --%s: %q is not an integer", name, *v)
	}
	return n, nil
}

func (o *options) given(name string) bool { return o.vals[name] != nil }

func (o *options) stringValue(name string) string {
	if v := o.vals[name]; v != nil {
		return *v
	}
	return ""
}

// ---------------------------------------------------------------------------
// Shared helpers.

func writeJSON(v interface{}) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func openSection(name string) (*os.File, *io.SectionReader, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file", name)
	}
	return f, io.NewSectionReader(f, 0, st.Size()), nil
}

// tocDecompressor is a Decompressor that can also hand out the raw TOC JSON.
// In v0.12.0 DecompressTOC is a method of the concrete decompressors but not
// part of the estargz.Decompressor interface.
type tocDecompressor interface {
	estargz.Decompressor
	DecompressTOC(r io.Reader) (io.ReadCloser, error)
}

// decompressorsFor lists the decompressors in the order estargz.Open tries
// them: the two gzip flavours first, then zstd:chunked when asked for.
func decompressorsFor(zstdChunked bool) []tocDecompressor {
	ds := []tocDecompressor{&estargz.GzipDecompressor{}, &estargz.LegacyGzipDecompressor{}}
	if zstdChunked {
		ds = append(ds, &zstdchunked.Decompressor{})
	}
	return ds
}

func openReader(sr *io.SectionReader, zstdChunked bool) (*estargz.Reader, error) {
	var opts []estargz.OpenOption
	if zstdChunked {
		opts = append(opts, estargz.WithDecompressors(&zstdchunked.Decompressor{}))
	}
	r, err := estargz.Open(sr, opts...)
	if err != nil {
		return nil, fmt.Errorf("estargz.Open: %w", err)
	}
	return r, nil
}

// parseFooterSafely calls d.ParseFooter, converting a panic (the gzip footer
// parser indexes the gzip Extra field without checking its length) into an
// error.
func parseFooterSafely(d estargz.Decompressor, footer []byte) (tocOff, tocSize int64, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("footer parser panicked: %v", p)
		}
	}()
	_, tocOff, tocSize, err = d.ParseFooter(footer)
	return tocOff, tocSize, err
}

// rawTOC locates the TOC through the footer and returns the decompressed TOC
// JSON exactly as stored in the blob.
func rawTOC(sr *io.SectionReader, zstdChunked bool) ([]byte, error) {
	var problems []string
	size := sr.Size()
	for _, d := range decompressorsFor(zstdChunked) {
		fsz := d.FooterSize()
		if size < fsz {
			problems = append(problems, fmt.Sprintf("%T: blob smaller than footer", d))
			continue
		}
		footer := make([]byte, fsz)
		if _, err := sr.ReadAt(footer, size-fsz); err != nil {
			return nil, fmt.Errorf("reading footer: %w", err)
		}
		tocOff, tocSize, err := parseFooterSafely(d, footer)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%T: %v", d, err))
			continue
		}
		if tocSize <= 0 {
			tocSize = size - tocOff - fsz
		}
		if tocOff < 0 || tocSize <= 0 || tocOff+tocSize > size-fsz {
			problems = append(problems, fmt.Sprintf("%T: TOC range %d+%d outside blob of %d bytes", d, tocOff, tocSize, size))
			continue
		}
		rc, err := d.DecompressTOC(io.NewSectionReader(sr, tocOff, tocSize))
		if err != nil {
			problems = append(problems, fmt.Sprintf("%T: %v", d, err))
			continue
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			problems = append(problems, fmt.Sprintf("%T: reading TOC: %v", d, err))
			continue
		}
		return data, nil
	}
	return nil, fmt.Errorf("no TOC found: %s", strings.Join(problems, "; "))
}

// uncompressedDigest decompresses the layer the way a container runtime
// would and returns its diffID and size. For gzip the whole blob is one
// multi-member gzip stream (the TOC tar entry and the footer are part of the
// layer content). For zstd:chunked the TOC and footer live in skippable
// frames, so estargz.Unpack (payload up to the TOC) gives the layer content.
func uncompressedDigest(sr *io.SectionReader, zstdChunked bool) (digest.Digest, int64, error) {
	var rc io.ReadCloser
	var err error
	if zstdChunked {
		rc, err = estargz.Unpack(io.NewSectionReader(sr, 0, sr.Size()), &zstdchunked.Decompressor{})
		if err != nil {
			return "", 0, fmt.Errorf("estargz.Unpack: %w", err)
		}
	} else {
		rc, err = gzip.NewReader(io.NewSectionReader(sr, 0, sr.Size()))
		if err != nil {
			return "", 0, fmt.Errorf("gunzip: %w", err)
		}
	}
	defer rc.Close()
	dg := digest.Canonical.Digester()
	n, err := io.Copy(dg.Hash(), rc)
	if err != nil {
		return "", 0, fmt.Errorf("decompressing blob: %w", err)
	}
	return dg.Digest(), n, nil
}

// ---------------------------------------------------------------------------
// toc

func cmdTOC(args []string) error {
	o := newOptions([]string{"zstdchunked"}, nil)
	pos, err := o.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("toc: want exactly one argument: BLOB")
	}
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	data, err := rawTOC(sr, o.flag("zstdchunked"))
	if err != nil {
		return err
	}
	if _, err := os.Stdout.Write(data); err != nil {
		return err
	}
	return nil
}

// ---------------------------------------------------------------------------
// build

// zstdCompression pairs the zstd:chunked compressor and decompressor into
// the estargz.Compression that estargz.WithCompression expects.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

type buildResult struct {
	TOCDigest        string `json:"tocDigest"`
	DiffID           string `json:"diffID"`
	UncompressedSize int64  `json:"uncompressedSize"`
	BlobSize         int64  `json:"blobSize"`
	BlobDigest       string `json:"blobDigest"`
}

func cmdBuild(args []string) error {
	o := newOptions(
		[]string{"allow-missing-prioritized", "zstdchunked"},
		[]string{"chunk-size", "level", "prioritized", "procs"},
	)
	pos, err := o.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("build: want exactly two arguments: IN.tar OUT.blob")
	}
	in, out := pos[0], pos[1]
	useZstd := o.flag("zstdchunked")
	chunkSize, err := o.intValue("chunk-size", 0)
	if err != nil {
		return err
	}
	if chunkSize < 0 {
		return errors.New("--chunk-size must not be negative")
	}
	defaultLevel := gzip.BestCompression
	if useZstd {
		defaultLevel = 3 // the zstd command-line default
	}
	level, err := o.intValue("level", defaultLevel)
	if err != nil {
		return err
	}
	procs, err := o.intValue("procs", 0)
	if err != nil {
		return err
	}

	buildOpts := []estargz.Option{estargz.WithChunkSize(chunkSize)}
	if useZstd {
		buildOpts = append(buildOpts, estargz.WithCompression(zstdCompression{
			&zstdchunked.Compressor{CompressionLevel: zstd.EncoderLevelFromZstd(level)},
			&zstdchunked.Decompressor{},
		}))
	} else {
		if level < gzip.HuffmanOnly || level > gzip.BestCompression {
			return fmt.Errorf("--level %d is not a gzip level (-2..9)", level)
		}
		buildOpts = append(buildOpts, estargz.WithCompressionLevel(level))
	}
	if o.given("prioritized") && o.stringValue("prioritized") != "" {
		buildOpts = append(buildOpts, estargz.WithPrioritizedFiles(strings.Split(o.stringValue("prioritized"), ",")))
	}
	var missed []string
	if o.flag("allow-missing-prioritized") {
		buildOpts = append(buildOpts, estargz.WithAllowPrioritizeNotFound(&missed))
	}
	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}

	inFile, inSR, err := openSection(in)
	if err != nil {
		return err
	}
	defer inFile.Close()

	blob, err := estargz.Build(inSR, buildOpts...)
	if err != nil {
		return fmt.Errorf("estargz.Build: %w", err)
	}
	defer blob.Close()

	outFile, err := os.Create(out)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			outFile.Close()
			os.Remove(out)
		}
	}()
	bd := digest.Canonical.Digester()
	n, err := io.Copy(io.MultiWriter(outFile, bd.Hash()), blob)
	if err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	if err := outFile.Close(); err != nil {
		return err
	}
	if err := blob.Close(); err != nil {
		return fmt.Errorf("closing built blob: %w", err)
	}
	if len(missed) > 0 {
		logf("prioritized files not found in input: %s", strings.Join(missed, ", "))
	}

	// Re-read what was written to get the uncompressed size, and cross-check
	// the diffID that Build computed on the fly.
	f2, sr2, err := openSection(out)
	if err != nil {
		return err
	}
	defer f2.Close()
	diffID, usize, err := uncompressedDigest(sr2, useZstd)
	if err != nil {
		return err
	}
	if diffID != blob.DiffID() {
		return fmt.Errorf("diffID of written blob %s differs from the one Build reported %s", diffID, blob.DiffID())
	}
	ok = true
	return writeJSON(buildResult{
		TOCDigest:        blob.TOCDigest().String(),
		DiffID:           diffID.String(),
		UncompressedSize: usize,
		BlobSize:         n,
		BlobDigest:       bd.Digest().String(),
	})
}

// ---------------------------------------------------------------------------
// verify

type chunkOut struct {
	Offset      int64  `json:"offset"`
	ChunkOffset int64  `json:"chunkOffset"`
	ChunkSize   int64  `json:"chunkSize"`
	ChunkDigest string `json:"chunkDigest"`
}

type entryOut struct {
	Name          string            `json:"name"`
	Type          string            `json:"type"`
	Size          int64             `json:"size"`
	Mode          int64             `json:"mode"`
	UID           int               `json:"uid"`
	GID           int               `json:"gid"`
	UserName      string            `json:"userName"`
	GroupName     string            `json:"groupName"`
	LinkName      string            `json:"linkName"`
	DevMajor      int               `json:"devMajor"`
	DevMinor      int               `json:"devMinor"`
	ModTime       string            `json:"modTime"`
	Xattrs        map[string][]byte `json:"xattrs"`
	Digest        string            `json:"digest"`
	ContentSHA256 string            `json:"contentSHA256"`
	NumLink       int               `json:"numLink"`
	Chunks        []chunkOut        `json:"chunks"`
}

type verifyResult struct {
	TOCDigest        string     `json:"tocDigest"`
	Entries          []entryOut `json:"entries"`
	ChunksVerified   int        `json:"chunksVerified"`
	DiffID           string     `json:"diffID"`
	UncompressedSize int64      `json:"uncompressedSize"`
}

// treeChecker walks the reader's directory tree. Hard links share one
// *TOCEntry between several names, so chunk verification is done once per
// entry object and remembered here.
type treeChecker struct {
	r        *estargz.Reader
	verifier estargz.TOCEntryVerifier
	chunks   map[*estargz.TOCEntry][]chunkOut
	verified int
	entries  []entryOut
}

func cmdVerify(args []string) error {
	o := newOptions([]string{"zstdchunked"}, nil)
	pos, err := o.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("verify: want exactly two arguments: BLOB TOCDIGEST|-")
	}
	useZstd := o.flag("zstdchunked")
	f, sr, err := openSection(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()

	r, err := openReader(sr, useZstd)
	if err != nil {
		return err
	}
	var v estargz.TOCEntryVerifier
	if pos[1] == "-" {
		v, err = r.Verifiers()
		if err != nil {
			return fmt.Errorf("Verifiers: %w", err)
		}
	} else {
		want, perr := digest.Parse(pos[1])
		if perr != nil {
			return fmt.Errorf("bad TOC digest %q: %w", pos[1], perr)
		}
		v, err = r.VerifyTOC(want)
		if err != nil {
			return fmt.Errorf("VerifyTOC: %w", err)
		}
	}

	// The reader hashes only the bytes its JSON decoder consumed; make sure
	// that equals the whole stored TOC file.
	tocBytes, err := rawTOC(sr, useZstd)
	if err != nil {
		return err
	}
	if got := digest.FromBytes(tocBytes); got != r.TOCDigest() {
		return fmt.Errorf("sha256 of stored TOC JSON is %s but the reader computed %s", got, r.TOCDigest())
	}
	var tocDoc struct {
		Entries []json.RawMessage `json:"entries"`
	}
	if err := json.Unmarshal(tocBytes, &tocDoc); err != nil {
		return fmt.Errorf("TOC JSON: %w", err)
	}

	tc := &treeChecker{r: r, verifier: v, chunks: map[*estargz.TOCEntry][]chunkOut{}}
	root, ok := r.Lookup("")
	switch {
	case ok:
		if root.Type != "dir" {
			return fmt.Errorf("root entry has type %q, not dir", root.Type)
		}
		if err := tc.walk(root, "", map[*estargz.TOCEntry]bool{root: true}); err != nil {
			return err
		}
	case len(tocDoc.Entries) == 0:
		// estargz v0.12.0 creates no root for a TOC without entries.
	default:
		return fmt.Errorf("TOC has %d entries but no root directory", len(tocDoc.Entries))
	}
	sort.Slice(tc.entries, func(i, j int) bool { return tc.entries[i].Name < tc.entries[j].Name })
	if tc.entries == nil {
		tc.entries = []entryOut{}
	}

	diffID, usize, err := uncompressedDigest(sr, useZstd)
	if err != nil {
		return err
	}
	return writeJSON(verifyResult{
		TOCDigest:        r.TOCDigest().String(),
		Entries:          tc.entries,
		ChunksVerified:   tc.verified,
		DiffID:           diffID.String(),
		UncompressedSize: usize,
	})
}

// walk records every child of dir (recursively). onPath holds the
// directories on the current path, to refuse cycles.
func (tc *treeChecker) walk(dir *estargz.TOCEntry, prefix string, onPath map[*estargz.TOCEntry]bool) error {
	type child struct {
		name string
		ent  *estargz.TOCEntry
	}
	var kids []child
	dir.ForeachChild(func(base string, ent *estargz.TOCEntry) bool {
		kids = append(kids, child{base, ent})
		return true
	})
	sort.Slice(kids, func(i, j int) bool { return kids[i].name < kids[j].name })
	for _, k := range kids {
		p := k.name
		if prefix != "" {
			p = prefix + "/" + k.name
		}
		if err := tc.record(p, k.ent); err != nil {
			return err
		}
		if k.ent.Type == "dir" {
			if onPath[k.ent] {
				return fmt.Errorf("%s: directory cycle", p)
			}
			onPath[k.ent] = true
			if err := tc.walk(k.ent, p, onPath); err != nil {
				return err
			}
			delete(onPath, k.ent)
		}
	}
	return nil
}

func (tc *treeChecker) record(name string, e *estargz.TOCEntry) error {
	out := entryOut{
		Name:      name,
		Type:      e.Type,
		Size:      e.Size,
		Mode:      e.Mode,
		UID:       e.UID,
		GID:       e.GID,
		UserName:  e.Uname,
		GroupName: e.Gname,
		LinkName:  e.LinkName,
		DevMajor:  e.DevMajor,
		DevMinor:  e.DevMinor,
		Xattrs:    map[string][]byte{},
		Digest:    e.Digest,
		NumLink:   e.NumLink,
		Chunks:    []chunkOut{},
	}
	if t := e.ModTime(); !t.IsZero() {
		out.ModTime = t.UTC().Format(time.RFC3339)
	}
	for k, v := range e.Xattrs {
		out.Xattrs[k] = v
	}
	if e.Type == "reg" {
		chunks, err := tc.verifyChunks(e)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		out.Chunks = chunks
		sum, err := tc.contentDigest(name, e)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		out.ContentSHA256 = sum
	}
	tc.entries = append(tc.entries, out)
	return nil
}

// verifyChunks reads each chunk of the regular file e through the public
// API and checks it against the verifier from VerifyTOC/Verifiers. It uses
// e.Name (the name the entry was stored under) rather than the walked name:
// in v0.12.0 ChunkEntryForOffset keys its chunk table by the stored name, so
// asking it with a hard link's name finds only the first chunk.
func (tc *treeChecker) verifyChunks(e *estargz.TOCEntry) ([]chunkOut, error) {
	if done, ok := tc.chunks[e]; ok {
		return done, nil
	}
	chunks := []chunkOut{}
	name := e.Name
	fr, err := tc.r.OpenFile(name)
	if err != nil {
		return nil, fmt.Errorf("OpenFile: %w", err)
	}
	whole := sha256.New()
	var off int64
	for off < e.Size {
		ce, ok := tc.r.ChunkEntryForOffset(name, off)
		if !ok {
			return nil, fmt.Errorf("no chunk entry for offset %d", off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 || ce.ChunkOffset+ce.ChunkSize > e.Size {
			return nil, fmt.Errorf("chunk for offset %d has chunkOffset=%d chunkSize=%d (file size %d)",
				off, ce.ChunkOffset, ce.ChunkSize, e.Size)
		}
		buf := make([]byte, ce.ChunkSize)
		n, err := fr.ReadAt(buf, ce.ChunkOffset)
		if n != len(buf) || (err != nil && err != io.EOF) {
			return nil, fmt.Errorf("reading chunk at %d (%d bytes): got %d bytes: %v", off, len(buf), n, err)
		}
		dv, err := tc.verifier.Verifier(ce)
		if err != nil {
			return nil, fmt.Errorf("chunk at %d: %w", off, err)
		}
		if _, err := dv.Write(buf); err != nil {
			return nil, err
		}
		if !dv.Verified() {
			return nil, fmt.Errorf("chunk at file offset %d (blob offset %d) failed verification", off, ce.Offset)
		}
		whole.Write(buf)
		chunks = append(chunks, chunkOut{
			Offset:      ce.Offset,
			ChunkOffset: ce.ChunkOffset,
			ChunkSize:   ce.ChunkSize,
			ChunkDigest: ce.ChunkDigest,
		})
		tc.verified++
		off += ce.ChunkSize
	}
	if e.Size > 0 {
		if extra, ok := tc.r.ChunkEntryForOffset(name, e.Size); ok {
			return nil, fmt.Errorf("unexpected chunk entry past end of file (chunkOffset=%d)", extra.ChunkOffset)
		}
	}
	if err := checkFileDigest(e, whole.Sum(nil)); err != nil {
		return nil, fmt.Errorf("content assembled from chunks: %w", err)
	}
	tc.chunks[e] = chunks
	return chunks, nil
}

// contentDigest reads the whole file through OpenFile under the walked name
// (so hard link names are exercised too) and compares it with the entry's
// digest.
func (tc *treeChecker) contentDigest(name string, e *estargz.TOCEntry) (string, error) {
	fr, err := tc.r.OpenFile(name)
	if err != nil {
		return "", fmt.Errorf("OpenFile: %w", err)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, fr, make([]byte, 1<<20))
	if err != nil {
		return "", fmt.Errorf("reading content: %w", err)
	}
	if n != e.Size {
		return "", fmt.Errorf("read %d bytes, entry size is %d", n, e.Size)
	}
	sum := h.Sum(nil)
	if err := checkFileDigest(e, sum); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(sum), nil
}

func checkFileDigest(e *estargz.TOCEntry, sum []byte) error {
	if e.Digest == "" {
		return errors.New("regular file entry has no digest")
	}
	got := "sha256:" + hex.EncodeToString(sum)
	if got != e.Digest {
		return fmt.Errorf("content digest %s does not match entry digest %s", got, e.Digest)
	}
	return nil
}

// cmdBuildCS writes IN.tar as containers/storage zstd:chunked to OUT.blob.
func cmdBuildCS(args []string) error {
	o := newOptions(nil, []string{"level"})
	pos, err := o.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("build-cs: want exactly two arguments: IN.tar OUT.blob")
	}
	level, err := o.intValue("level", 10) // the containers/storage default
	if err != nil {
		return err
	}
	in, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(pos[1])
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(pos[1])
		}
	}()
	counted := &countingWriter{w: out, h: sha256.New()}
	metadata := map[string]string{}
	w, err := cscompressor.ZstdCompressor(counted, metadata, &level)
	if err != nil {
		return fmt.Errorf("ZstdCompressor: %w", err)
	}
	// The 1.43 writer stops consuming at the end-of-archive marker and drops
	// what follows (record padding included), which io.Copy reports as a
	// short write.
	if _, err := io.Copy(w, in); err != nil && !errors.Is(err, io.ErrShortWrite) {
		return fmt.Errorf("compressing: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("closing the compressor: %w", err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	ok = true
	return writeJSON(map[string]interface{}{
		"blobSize":    counted.n,
		"blobDigest":  "sha256:" + hex.EncodeToString(counted.h.Sum(nil)),
		"annotations": metadata,
	})
}

// countingWriter passes writes through while counting and hashing them.
type countingWriter struct {
	w io.Writer
	h hash.Hash
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	return n, err
}
