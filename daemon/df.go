package daemon

import (
	"net/http"

	"github.com/opencontainers/go-digest"

	"github.com/strata-storage/strata/image"
	"github.com/strata-storage/strata/layer"
)

// diskUsage is GET /system/df in the shape before API 1.52, which the CLI
// of every version still reads: one list per kind.
type diskUsage struct {
	LayersSize int64
	Images     []imageSummary
	Containers []containerSummary
	Volumes    []struct{}
	BuildCache []struct{}
}

// systemDF sizes what the store holds. Unlike the image list, each image
// has its container count and SharedSize: the bytes of its layers that
// other images use too, which the CLI subtracts to find what is
// reclaimable.
func (d *Daemon) systemDF(w http.ResponseWriter, r *http.Request, _ map[string]string) error {
	layers, err := d.store.Layers().List()
	if err != nil {
		return err
	}
	imgs, err := d.store.Images().List()
	if err != nil {
		return err
	}
	ctrs, err := d.store.Containers().List()
	if err != nil {
		return err
	}
	du := diskUsage{Images: []imageSummary{}, Containers: []containerSummary{}, Volumes: []struct{}{}, BuildCache: []struct{}{}}
	for _, l := range layers {
		du.LayersSize += l.Size
	}
	shared := sharedSizes(imgs, layers)
	ctrsOf := map[digest.Digest]int64{}
	for _, c := range ctrs {
		ctrsOf[c.Image]++
	}
	for _, img := range imgs {
		s, err := d.imageSummary(r, img)
		if err != nil {
			return err
		}
		s.SharedSize, s.Containers = shared[img.ID], ctrsOf[img.ID]
		du.Images = append(du.Images, s)
	}
	for _, c := range ctrs {
		s, err := d.summary(c, containerLabels(c), true)
		if err != nil {
			return err
		}
		du.Containers = append(du.Containers, s)
	}
	return writeJSON(w, http.StatusOK, du)
}

// sharedSizes returns, per image, the bytes of its layers that other
// images use too.
func sharedSizes(imgs []image.Image, layers []layer.Layer) map[digest.Digest]int64 {
	sizes := map[digest.Digest]int64{}
	for _, l := range layers {
		sizes[l.ChainID] = l.Size
	}
	users := map[digest.Digest]int{} // images per layer
	for _, img := range imgs {
		for _, c := range chains(img.DiffIDs()) {
			users[c]++
		}
	}
	shared := map[digest.Digest]int64{}
	for _, img := range imgs {
		shared[img.ID] = 0
		for _, c := range chains(img.DiffIDs()) {
			if users[c] > 1 {
				shared[img.ID] += sizes[c]
			}
		}
	}
	return shared
}

// chains returns the chain ID of each layer of diffIDs, base first.
func chains(diffIDs []digest.Digest) []digest.Digest {
	out := make([]digest.Digest, len(diffIDs))
	for i := range diffIDs {
		out[i] = layer.ChainID(diffIDs[:i+1])
	}
	return out
}
