package image

import (
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strconv"
	"strings"
	"unicode"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/strata-storage/strata/errdefs"
)

// ApplyChanges applies Dockerfile instructions to a config, as the
// --change flags of docker import and docker commit do: CMD, ENTRYPOINT,
// ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME and WORKDIR. ONBUILD, which
// Docker also takes, is refused: an OCI config has no field to keep it in.
// cfg's maps and slices are not modified.
func ApplyChanges(cfg ocispec.ImageConfig, changes []string) (ocispec.ImageConfig, error) {
	cfg.Env = slices.Clone(cfg.Env)
	cfg.Labels = maps.Clone(cfg.Labels)
	for _, change := range changes {
		if err := applyChange(&cfg, change); err != nil {
			return cfg, fmt.Errorf("change %q: %w", change, err)
		}
	}
	return cfg, nil
}

func applyChange(cfg *ocispec.ImageConfig, change string) error {
	instr, args, _ := strings.Cut(strings.TrimSpace(change), " ")
	args = strings.TrimSpace(args)
	var err error
	switch strings.ToUpper(instr) {
	case "CMD":
		cfg.Cmd, err = command(args)
	case "ENTRYPOINT":
		cfg.Entrypoint, err = command(args)
	case "ENV":
		var kvs [][2]string
		if kvs, err = keyValues(args, true); err == nil {
			for _, kv := range kvs {
				cfg.Env = setEnv(cfg.Env, kv[0], kv[1])
			}
		}
	case "LABEL":
		var kvs [][2]string
		if kvs, err = keyValues(args, false); err == nil {
			if cfg.Labels == nil {
				cfg.Labels = make(map[string]string)
			}
			for _, kv := range kvs {
				cfg.Labels[kv[0]] = kv[1]
			}
		}
	case "WORKDIR":
		if args == "" {
			return fmt.Errorf("WORKDIR needs a path: %w", errdefs.ErrInvalid)
		}
		cfg.WorkingDir = path.Join("/", cfg.WorkingDir, args)
		if path.IsAbs(args) {
			cfg.WorkingDir = path.Clean(args)
		}
	case "USER":
		if args == "" {
			return fmt.Errorf("USER needs a user: %w", errdefs.ErrInvalid)
		}
		cfg.User = args
	case "EXPOSE":
		err = expose(cfg, args)
	case "VOLUME":
		err = volume(cfg, args)
	case "STOPSIGNAL":
		if args == "" || strings.ContainsAny(args, " \t") {
			return fmt.Errorf("STOPSIGNAL needs one signal: %w", errdefs.ErrInvalid)
		}
		cfg.StopSignal = args
	default:
		return fmt.Errorf("only CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME and WORKDIR can be changed: %w", errdefs.ErrNotSupported)
	}
	return err
}

// command parses the exec form ["a","b"] or, when args is not a JSON array,
// the shell form, run by /bin/sh -c. "[]" clears the command.
func command(args string) ([]string, error) {
	var argv []string
	if strings.HasPrefix(args, "[") && json.Unmarshal([]byte(args), &argv) == nil {
		return argv, nil
	}
	if args == "" {
		return nil, fmt.Errorf("a command is needed: %w", errdefs.ErrInvalid)
	}
	return []string{"/bin/sh", "-c", args}, nil
}

// keyValues parses k=v pairs whose words may be quoted. With legacy, the
// form "K some value" (one key, the rest its value) is accepted too.
func keyValues(args string, legacy bool) ([][2]string, error) {
	words, err := splitWords(args)
	if err != nil {
		return nil, err
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("key=value needed: %w", errdefs.ErrInvalid)
	}
	if legacy && !strings.Contains(words[0], "=") {
		key, value, _ := strings.Cut(args, " ")
		return [][2]string{{key, strings.TrimSpace(value)}}, nil
	}
	kvs := make([][2]string, 0, len(words))
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value: %w", w, errdefs.ErrInvalid)
		}
		kvs = append(kvs, [2]string{k, v})
	}
	return kvs, nil
}

// splitWords splits s at white space outside quotes, removing the quotes;
// a backslash escapes the next character outside single quotes.
func splitWords(s string) ([]string, error) {
	var (
		words   []string
		word    strings.Builder
		inWord  bool
		quote   rune
		escaped bool
	)
	for _, c := range s {
		switch {
		case escaped:
			word.WriteRune(c)
			escaped = false
		case c == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			word.WriteRune(c)
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case unicode.IsSpace(c):
			if inWord {
				words = append(words, word.String())
				word.Reset()
				inWord = false
			}
		default:
			word.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, fmt.Errorf("unterminated quote or escape in %q: %w", s, errdefs.ErrInvalid)
	}
	if inWord {
		words = append(words, word.String())
	}
	return words, nil
}

// setEnv sets key in an environment list, replacing an earlier value.
func setEnv(env []string, key, value string) []string {
	kv := key + "=" + value
	for i, e := range env {
		if strings.HasPrefix(e, key+"=") {
			env[i] = kv
			return env
		}
	}
	return append(env, kv)
}

// expose adds ports such as "80", "53/udp" or "8000-8002/tcp".
func expose(cfg *ocispec.ImageConfig, args string) error {
	ports := strings.Fields(args)
	if len(ports) == 0 {
		return fmt.Errorf("EXPOSE needs a port: %w", errdefs.ErrInvalid)
	}
	exposed := maps.Clone(cfg.ExposedPorts)
	if exposed == nil {
		exposed = make(map[string]struct{})
	}
	for _, p := range ports {
		spec, proto, ok := strings.Cut(strings.ToLower(p), "/")
		if !ok {
			proto = "tcp"
		}
		if !slices.Contains([]string{"tcp", "udp", "sctp"}, proto) {
			return fmt.Errorf("port %q: protocol must be tcp, udp or sctp: %w", p, errdefs.ErrInvalid)
		}
		lo, hi, isRange := strings.Cut(spec, "-")
		if !isRange {
			hi = lo
		}
		first, err1 := strconv.Atoi(lo)
		last, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || first < 1 || last > 65535 || first > last {
			return fmt.Errorf("port %q: %w", p, errdefs.ErrInvalid)
		}
		for n := first; n <= last; n++ {
			exposed[strconv.Itoa(n)+"/"+proto] = struct{}{}
		}
	}
	cfg.ExposedPorts = exposed
	return nil
}

// volume adds mount points given as a JSON array or as words.
func volume(cfg *ocispec.ImageConfig, args string) error {
	var paths []string
	if !strings.HasPrefix(args, "[") || json.Unmarshal([]byte(args), &paths) != nil {
		paths = strings.Fields(args)
	}
	if len(paths) == 0 {
		return fmt.Errorf("VOLUME needs a path: %w", errdefs.ErrInvalid)
	}
	volumes := maps.Clone(cfg.Volumes)
	if volumes == nil {
		volumes = make(map[string]struct{})
	}
	for _, p := range paths {
		if p == "" {
			return fmt.Errorf("VOLUME path is empty: %w", errdefs.ErrInvalid)
		}
		volumes[p] = struct{}{}
	}
	cfg.Volumes = volumes
	return nil
}
