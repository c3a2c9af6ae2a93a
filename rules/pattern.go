package rules

import (
	"fmt"
	"strings"
	"sync"
	"unicode"
)

// maxTypeLen bounds an event type or pattern, like AMQP's 255-byte routing key.
const maxTypeLen = 255

// checkPattern validates an eventType: words separated by '.', with `*` and
// `#` allowed only as whole words. It reports whether p is a pattern.
func checkPattern(p string) (isPattern bool, err error) {
	if p == "" {
		return false, fmt.Errorf("required")
	}
	if len(p) > maxTypeLen {
		return false, fmt.Errorf("longer than %d bytes", maxTypeLen)
	}
	for w := range strings.SplitSeq(p, ".") {
		switch {
		case w == "":
			return false, fmt.Errorf("%q has an empty word (words are separated by single dots)", p)
		case w == "*" || w == "#":
			isPattern = true
		case strings.ContainsAny(w, "*#"):
			return false, fmt.Errorf("%q: '*' and '#' must be whole words, as in order.* or order.#", p)
		case strings.IndexFunc(w, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
			return false, fmt.Errorf("%q contains a space or control character", p)
		}
	}
	return isPattern, nil
}

// matchWords reports whether the words of an event type match the words of a
// pattern: `*` is exactly one word, `#` zero or more. It is the classic
// wildcard algorithm over words with one backtrack point, so it takes
// O(len(typ)*len(pat)) at worst instead of exponential time.
func matchWords(pat, typ []string) bool {
	p, t := 0, 0
	star, mark := -1, 0 // position of the last '#' seen and the type word it resumed at
	for t < len(typ) {
		switch {
		case p < len(pat) && pat[p] == "#":
			star, mark = p, t
			p++
		case p < len(pat) && (pat[p] == "*" || pat[p] == typ[t]):
			p++
			t++
		case star >= 0:
			// Let the last '#' swallow one more word and retry after it.
			mark++
			p, t = star+1, mark
		default:
			return false
		}
	}
	for p < len(pat) && pat[p] == "#" {
		p++
	}
	return p == len(pat)
}

// maxCachedTypes bounds the per-type cache, so events with ever new types
// cannot grow memory without limit; beyond it lookups just scan the patterns.
const maxCachedTypes = 4096

// index finds the enabled rules an event type triggers, in file order. Its
// cost depends on the rules of that type, not on the total number of rules:
// exact types are a map lookup, and pattern matches are computed once per
// event type and cached.
type index struct {
	// byType holds, for every exact type some rule names, its exact rules
	// merged in file order with the pattern rules that match it.
	byType map[string][]*compiledRule
	// patterns are the pattern rules in file order.
	patterns []*compiledRule

	mu    sync.RWMutex
	cache map[string][]*compiledRule // other types -> matching pattern rules
}

func newIndex(rules []*compiledRule) *index {
	idx := &index{byType: map[string][]*compiledRule{}, cache: map[string][]*compiledRule{}}
	for _, r := range rules {
		switch {
		case !r.enabled:
		case r.patternWords != nil:
			idx.patterns = append(idx.patterns, r)
		default:
			idx.byType[r.rule.EventType] = append(idx.byType[r.rule.EventType], r)
		}
	}
	if len(idx.patterns) == 0 {
		return idx
	}
	for typ, exact := range idx.byType {
		words := strings.Split(typ, ".")
		var merged []*compiledRule
		i := 0
		for _, p := range idx.patterns {
			if !matchWords(p.patternWords, words) {
				continue
			}
			// Both lists are in file order: merge them to keep it.
			for i < len(exact) && exact[i].order < p.order {
				merged = append(merged, exact[i])
				i++
			}
			merged = append(merged, p)
		}
		if merged != nil {
			idx.byType[typ] = append(merged, exact[i:]...)
		}
	}
	return idx
}

// lookup returns the enabled rules for an event type, in file order. The
// returned slice is shared: callers must not modify it.
func (idx *index) lookup(typ string) []*compiledRule {
	if list, ok := idx.byType[typ]; ok {
		return list
	}
	if len(idx.patterns) == 0 {
		return nil
	}
	idx.mu.RLock()
	list, ok := idx.cache[typ]
	idx.mu.RUnlock()
	if ok {
		return list
	}
	words := strings.Split(typ, ".")
	for _, r := range idx.patterns {
		if matchWords(r.patternWords, words) {
			list = append(list, r)
		}
	}
	if len(typ) > maxTypeLen {
		return list // no pattern-sized key may pin a huge string
	}
	idx.mu.Lock()
	if len(idx.cache) < maxCachedTypes {
		// Cloned so the cache never keeps alive the buffer the type came from.
		idx.cache[strings.Clone(typ)] = list
	}
	idx.mu.Unlock()
	return list
}
