package imagearchive

import (
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
)

// blob is a file of an archive that an image needs, with what the archive
// says of it in advance.
type blob struct {
	name   string        // path in the archive
	digest digest.Digest // "" when nothing names its digest
	size   int64         // -1 when nothing gives its size
}

// descriptorBlob is the blob an OCI descriptor points at in a layout.
func descriptorBlob(d ocispec.Descriptor) (blob, error) {
	if err := d.Digest.Validate(); err != nil {
		return blob{}, fmt.Errorf("descriptor digest %q: %v: %w", d.Digest, err, errdefs.ErrInvalid)
	}
	if d.Size < 0 {
		return blob{}, fmt.Errorf("descriptor %s has a negative size: %w", d.Digest, errdefs.ErrInvalid)
	}
	return blob{
		name:   path.Join("blobs", d.Digest.Algorithm().String(), d.Digest.Encoded()),
		digest: d.Digest,
		size:   d.Size,
	}, nil
}

// pathBlob is the blob at a path named by manifest.json. Paths of the forms
// "blobs/<alg>/<hex>" and "<hex>.json" (a legacy config) name the digest
// of their content, which is then verified.
func pathBlob(p string) (blob, error) {
	name, err := cleanName(p)
	if err != nil {
		return blob{}, err
	}
	b := blob{name: name, size: -1}
	var d digest.Digest
	if rest, ok := strings.CutPrefix(name, "blobs/"); ok {
		alg, enc, _ := strings.Cut(rest, "/")
		d = digest.NewDigestFromEncoded(digest.Algorithm(alg), enc)
	} else if enc, ok := strings.CutSuffix(name, ".json"); ok && !strings.Contains(enc, "/") {
		d = digest.NewDigestFromEncoded(digest.SHA256, enc)
	}
	if d.Validate() == nil {
		b.digest = d
	}
	return b, nil
}

// checkBlob makes sure b exists and has the size it should, before anything
// is registered.
func checkBlob(fs files, b blob) error {
	rc, size, err := fs.Open(b.name)
	if err != nil {
		return err
	}
	rc.Close()
	if b.size >= 0 && size != b.size {
		return fmt.Errorf("blob %s has %d bytes, its descriptor says %d: %w", b.name, size, b.size, errdefs.ErrInvalid)
	}
	return nil
}

// readBlob reads a small blob whole and verifies it.
func readBlob(fs files, b blob) ([]byte, error) {
	rc, size, err := fs.Open(b.name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if size > maxJSON {
		return nil, fmt.Errorf("%s is too large (%d bytes): %w", b.name, size, errdefs.ErrInvalid)
	}
	r := newBlobReader(rc, b)
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return data, nil
}

// blobReader verifies a blob while it is read: at the end of the content
// it returns an error instead of io.EOF if the size or digest is wrong.
type blobReader struct {
	rc       io.ReadCloser
	b        blob
	digester digest.Digester // nil when b.digest is ""
	n        int64
	end      error // io.EOF or the verification error, once reached

	progress Progress // nil = quiet
	id       string
	closed   bool
}

func newBlobReader(rc io.ReadCloser, b blob) *blobReader {
	r := &blobReader{rc: rc, b: b}
	if b.digest != "" {
		r.digester = b.digest.Algorithm().Digester()
	}
	return r
}

func (r *blobReader) Read(p []byte) (int, error) {
	if r.end != nil {
		return 0, r.end
	}
	n, err := r.rc.Read(p)
	r.n += int64(n)
	if r.digester != nil {
		r.digester.Hash().Write(p[:n])
	}
	if r.progress != nil && n > 0 {
		r.progress.Advance(r.id, int64(n))
	}
	if err == io.EOF {
		r.end = r.verify()
		err = r.end
	}
	return n, err
}

func (r *blobReader) verify() error {
	if r.b.size >= 0 && r.n != r.b.size {
		return fmt.Errorf("blob %s has %d bytes, its descriptor says %d: %w", r.b.name, r.n, r.b.size, errdefs.ErrInvalid)
	}
	if r.digester != nil && r.digester.Digest() != r.b.digest {
		return fmt.Errorf("blob %s has digest %s, want %s: %w", r.b.name, r.digester.Digest(), r.b.digest, errdefs.ErrInvalid)
	}
	return io.EOF
}

// showProgress reports the reading of the blob to p as layer id.
func (r *blobReader) showProgress(p Progress, id string, size int64) {
	if p == nil {
		return
	}
	r.progress, r.id = p, id
	p.Start(id, size)
}

// Close ends the progress of the blob. The file stays open for finish: its
// owner closes it.
func (r *blobReader) Close() error {
	if r.progress != nil && !r.closed {
		r.progress.Done(r.id)
	}
	r.closed = true
	return nil
}

// finish reads what the consumer left unread, such as bytes after the end
// of a compressed stream, and returns the verification result.
func (r *blobReader) finish() error {
	_, err := io.Copy(io.Discard, r)
	return err
}
