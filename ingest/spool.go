package ingest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The spool is where an acknowledged QoS 1 message lives until its rows are
// committed: an append-only log of checksummed records in segment files,
// written by one flusher that fsyncs groups of records (every publish that
// arrived during one fsync shares the next), read back in order by the
// writers, replayed from the start on the next run after a crash, and
// deleted a segment at a time once every record in it is committed.
//
// Record framing: length (uint32, big endian) | CRC-32C of the body (uint32) |
// body. A torn tail (a crash during a write) fails the length or checksum
// check and is cut off on open: those records were never acknowledged, since
// acknowledgement waits for the fsync that covers them.
//
// Without a directory the spool keeps records in memory and nothing is
// durable before commit: that is the "commit" durability mode, where the
// broker's acknowledgement waits for the database commit instead.

const (
	// rollCommitted is the size from which a current segment whose records
	// are all committed is sealed and freed.
	rollCommitted = 1 << 20
	recordHeader  = 8
	maxRecordSize = 64 << 20
	segmentPrefix = "seg-"
	segmentSuffix = ".nxs"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrSpoolFull is returned by Append when the spool's disk budget is used up
// and the caller would not (QoS 0) or could not (its deadline passed) wait.
var ErrSpoolFull = errors.New("ingest: spool full")

// errSpoolClosed is returned by Append after Close.
var errSpoolClosed = errors.New("ingest: spool closed")

type segment struct {
	id      uint64
	path    string
	f       *os.File // open for appending while this is the current segment
	written int64    // bytes written (and, once flushed, synced)
	records int64    // records written
	done    int64    // records committed
	sealed  bool     // no more appends
}

// spooled is one record handed to a writer.
type spooled struct {
	seg  *segment
	data []byte
	// ack, in memory mode, is answered once the record is committed (or
	// could not be).
	ack chan error
}

// Spool is the ingest journal (see the package comment above).
type Spool struct {
	dir       string
	ackFast   bool
	segSize   int64
	budget    int64
	syncEvery time.Duration
	log       *slog.Logger

	mu      sync.Mutex
	segs    []*segment // oldest first; the last is current when dir != ""
	buf     []byte     // appended, not yet written
	bufRecs int64
	waiters []chan error
	used    int64 // bytes on disk plus buffered
	closed  bool
	broken  error // a write or fsync failed: nothing more is acknowledged
	flushed chan struct{}
	space   chan struct{} // closed and replaced when room is freed
	data    chan struct{} // closed and replaced when records become readable
	kick    chan struct{}

	// reader state (one reader)
	rseg       *segment
	roff       int64
	rf         *os.File
	mem        []spooled // memory mode: records not yet read
	memPending int64     // memory mode: records not yet committed

	flusherDone chan struct{}

	// counters
	Fsyncs      atomic.Int64
	FsyncNanos  atomic.Int64
	Appended    atomic.Int64
	Replayed    int64 // records found on open
	replayBytes int64
}

// SpoolConfig configures a spool.
type SpoolConfig struct {
	// Dir holds the segment files; empty keeps records in memory (no
	// durability before commit).
	Dir string
	// SegmentBytes is the size at which a segment is sealed and a new one begun.
	SegmentBytes int64
	// BudgetBytes bounds the spool's size on disk (or in memory): beyond it
	// QoS 1 publishes wait (back-pressure) and QoS 0 ones are dropped.
	BudgetBytes int64
	// SyncInterval is the shortest time between the starts of two group
	// fsyncs; records appended meanwhile share the next one. Zero fsyncs as
	// soon as the previous fsync ends.
	SyncInterval time.Duration
	// AckOnAppend (memory mode only) acknowledges a QoS 1 message as soon as
	// it is queued, before anything is durable: the foundation's behaviour,
	// kept as the benchmark's baseline for the cost of durability. Never use
	// it in production.
	AckOnAppend bool
	Logger      *slog.Logger
}

// OpenSpool opens (creating it if needed) the spool in cfg.Dir, checks every
// record already there and cuts off a torn tail; those records are read back
// first (replay).
func OpenSpool(cfg SpoolConfig) (*Spool, error) {
	if cfg.SegmentBytes <= 0 {
		cfg.SegmentBytes = 64 << 20
	}
	if cfg.BudgetBytes <= 0 {
		cfg.BudgetBytes = 1 << 30
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Spool{dir: cfg.Dir, ackFast: cfg.AckOnAppend && cfg.Dir == "", segSize: cfg.SegmentBytes, budget: cfg.BudgetBytes,
		syncEvery: max(cfg.SyncInterval, 0), log: cfg.Logger,
		space: make(chan struct{}), data: make(chan struct{}), kick: make(chan struct{}, 1),
		flusherDone: make(chan struct{})}
	if s.dir == "" {
		close(s.flusherDone)
		return s, nil
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory %s: %w (set NXCLOUD_SPOOL_DIR to a writable directory)", s.dir, err)
	}
	names, err := filepath.Glob(filepath.Join(s.dir, segmentPrefix+"*"+segmentSuffix))
	if err != nil {
		return nil, err
	}
	var next uint64 = 1
	for _, name := range names {
		id, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(name), segmentPrefix), segmentSuffix), 10, 64)
		if err != nil {
			continue
		}
		seg := &segment{id: id, path: name, sealed: true}
		if err := s.recover(seg); err != nil {
			return nil, err
		}
		if seg.records == 0 {
			_ = os.Remove(name)
			continue
		}
		s.segs = append(s.segs, seg)
		s.used += seg.written
		s.Replayed += seg.records
		s.replayBytes += seg.written
		next = max(next, id+1)
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i].id < s.segs[j].id })
	if err := s.newSegment(next); err != nil {
		return nil, err
	}
	s.rseg = s.segs[0]
	if s.Replayed > 0 {
		s.log.Info("ingest spool: replaying records acknowledged before the last stop",
			"records", s.Replayed, "bytes", s.replayBytes, "segments", len(s.segs)-1)
	}
	go s.flusher()
	return s, nil
}

// recover counts seg's valid records and truncates anything after the last.
func (s *Spool) recover(seg *segment) error {
	f, err := os.OpenFile(seg.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("spool: open %s: %w", seg.path, err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var off int64
	var hdr [recordHeader]byte
	body := make([]byte, 0, 4096)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break
		}
		n := binary.BigEndian.Uint32(hdr[:4])
		if n == 0 || n > maxRecordSize {
			break
		}
		if cap(body) < int(n) {
			body = make([]byte, n)
		}
		body = body[:n]
		if _, err := io.ReadFull(r, body); err != nil {
			break
		}
		if crc32.Checksum(body, crcTable) != binary.BigEndian.Uint32(hdr[4:]) {
			break
		}
		off += recordHeader + int64(n)
		seg.records++
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != off {
		s.log.Warn("ingest spool: cutting off a torn tail (never acknowledged)", "segment", seg.path,
			"valid_bytes", off, "file_bytes", st.Size())
		if err := f.Truncate(off); err != nil {
			return fmt.Errorf("spool: truncate %s: %w", seg.path, err)
		}
		if err := f.Sync(); err != nil {
			return err
		}
	}
	seg.written = off
	return nil
}

func (s *Spool) newSegment(id uint64) error {
	path := filepath.Join(s.dir, fmt.Sprintf("%s%020d%s", segmentPrefix, id, segmentSuffix))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	// Make the new file's directory entry durable before anything in it is
	// acknowledged.
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	s.segs = append(s.segs, &segment{id: id, path: path, f: f})
	return nil
}

// Append adds one record. With durable set (QoS 1) it returns once the record
// is on disk (fsynced), waiting for room under the budget until deadline;
// otherwise (QoS 0) it returns at once, ErrSpoolFull when there is no room.
// In memory mode a durable Append returns once the record is committed.
func (s *Spool) Append(body []byte, durable bool, deadline time.Time) error {
	if len(body) == 0 || len(body) > maxRecordSize {
		return fmt.Errorf("spool: record of %d bytes", len(body))
	}
	size := int64(recordHeader + len(body))
	s.mu.Lock()
	for s.used+size > s.budget && !s.closed && s.broken == nil {
		if !durable {
			s.mu.Unlock()
			return ErrSpoolFull
		}
		space := s.space
		s.mu.Unlock()
		wait := time.Until(deadline)
		if wait <= 0 {
			return ErrSpoolFull
		}
		t := time.NewTimer(wait)
		select {
		case <-space:
			t.Stop()
		case <-t.C:
			return ErrSpoolFull
		}
		s.mu.Lock()
	}
	if s.closed {
		s.mu.Unlock()
		return errSpoolClosed
	}
	if s.broken != nil {
		err := s.broken
		s.mu.Unlock()
		return err
	}
	s.used += size
	s.Appended.Add(1)
	if s.dir == "" {
		rec := spooled{data: body}
		if durable && !s.ackFast {
			rec.ack = make(chan error, 1)
		}
		s.mem = append(s.mem, rec)
		s.memPending++
		s.signalData()
		s.mu.Unlock()
		if rec.ack == nil {
			return nil
		}
		return <-rec.ack
	}
	var hdr [recordHeader]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(body)))
	binary.BigEndian.PutUint32(hdr[4:], crc32.Checksum(body, crcTable))
	s.buf = append(s.buf, hdr[:]...)
	s.buf = append(s.buf, body...)
	s.bufRecs++
	var done chan error
	if durable {
		done = make(chan error, 1)
		s.waiters = append(s.waiters, done)
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	if done == nil {
		return nil
	}
	return <-done
}

// signalData wakes the reader; s.mu is held.
func (s *Spool) signalData() {
	close(s.data)
	s.data = make(chan struct{})
}

// flusher writes and fsyncs what was appended, one group at a time.
func (s *Spool) flusher() {
	defer close(s.flusherDone)
	var lastSync time.Time
	for {
		s.mu.Lock()
		for len(s.buf) == 0 && !s.closed {
			s.mu.Unlock()
			<-s.kick
			s.mu.Lock()
		}
		if len(s.buf) == 0 && s.closed {
			s.mu.Unlock()
			return
		}
		// Group commit: an fsync costs about as much CPU (kernel and
		// hypervisor) however little it covers, ~0.25 ms here, so under load
		// fsyncs are spaced by at least syncEvery and each covers everything
		// appended meanwhile; an idle spool fsyncs at once.
		if wait := s.syncEvery - time.Since(lastSync); wait > 0 && !s.closed {
			s.mu.Unlock()
			time.Sleep(wait)
			s.mu.Lock()
		}
		lastSync = time.Now()
		buf, recs, waiters := s.buf, s.bufRecs, s.waiters
		s.buf, s.bufRecs, s.waiters = nil, 0, nil
		seg := s.segs[len(s.segs)-1]
		if seg.written >= rollCommitted && seg.done == seg.records && s.broken == nil {
			// Everything in the current segment is committed: start a new
			// one so this one can be freed (a restart then replays nothing).
			seg.sealed = true
			_ = seg.f.Close()
			seg.f = nil
			if err := s.newSegment(seg.id + 1); err != nil {
				s.broken = err
			}
			s.freeLocked()
			seg = s.segs[len(s.segs)-1]
		}
		s.mu.Unlock()

		start := time.Now()
		_, err := seg.f.Write(buf)
		if err == nil {
			err = seg.f.Sync()
		}
		s.Fsyncs.Add(1)
		s.FsyncNanos.Add(int64(time.Since(start)))

		s.mu.Lock()
		if err != nil {
			s.broken = fmt.Errorf("ingest spool: write to %s failed, nothing more is acknowledged until restart: %w", seg.path, err)
			s.log.Error(s.broken.Error())
		} else {
			seg.written += int64(len(buf))
			seg.records += recs
			if seg.written >= s.segSize {
				seg.sealed = true
				_ = seg.f.Close()
				seg.f = nil
				if err2 := s.newSegment(seg.id + 1); err2 != nil {
					s.broken = err2
					s.log.Error("ingest spool: cannot start a new segment", "err", err2)
				}
			}
			s.signalData()
		}
		s.mu.Unlock()
		for _, w := range waiters {
			w <- err
		}
	}
}

// next returns up to maxRecs records in order, waiting until there is at
// least one (then at most maxWait for more) or stop is closed (then it
// returns what it has, possibly nothing). One goroutine reads.
func (s *Spool) next(maxRecs int, maxWait time.Duration, stop <-chan struct{}) []spooled {
	var out []spooled
	var deadline <-chan time.Time
	for {
		var data chan struct{}
		if s.dir == "" {
			s.mu.Lock()
			n := min(maxRecs-len(out), len(s.mem))
			out = append(out, s.mem[:n]...)
			s.mem = s.mem[n:]
			data = s.data
			s.mu.Unlock()
		} else {
			out, data = s.read(out, maxRecs)
		}
		if len(out) >= maxRecs {
			return out
		}
		if len(out) > 0 && deadline == nil {
			t := time.NewTimer(maxWait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-data:
		case <-deadline:
			return out
		case <-stop:
			// The spool was closed (flushed) before stop: one more pass
			// sees every record written.
			if s.dir == "" {
				s.mu.Lock()
				n := min(maxRecs-len(out), len(s.mem))
				out = append(out, s.mem[:n]...)
				s.mem = s.mem[n:]
				s.mu.Unlock()
				return out
			}
			out, _ = s.read(out, maxRecs)
			return out
		}
	}
}

// readChunk is how much of a segment the reader reads at once.
const readChunk = 1 << 20

// read appends complete, synced records from the reader's position to out
// and returns the channel that signals more data.
func (s *Spool) read(out []spooled, maxRecs int) ([]spooled, chan struct{}) {
	for len(out) < maxRecs {
		s.mu.Lock()
		seg, written, sealed := s.rseg, s.rseg.written, s.rseg.sealed
		if s.roff >= written {
			data := s.data
			if !sealed {
				s.mu.Unlock()
				return out, data
			}
			i := s.indexLocked(seg.id)
			if i < 0 || i+1 >= len(s.segs) {
				s.mu.Unlock()
				return out, data
			}
			if s.rf != nil {
				_ = s.rf.Close()
				s.rf = nil
			}
			s.rseg, s.roff = s.segs[i+1], 0
			s.freeLocked()
			s.mu.Unlock()
			continue
		}
		data := s.data
		s.mu.Unlock()

		if s.rf == nil {
			f, err := os.Open(seg.path)
			if err != nil {
				s.log.Error("ingest spool: cannot read segment", "segment", seg.path, "err", err)
				return out, data
			}
			s.rf = f
		}
		buf := make([]byte, min(written-s.roff, readChunk))
		if _, err := s.rf.ReadAt(buf, s.roff); err != nil {
			s.log.Error("ingest spool: read", "segment", seg.path, "err", err)
			return out, data
		}
		for len(buf) >= recordHeader && len(out) < maxRecs {
			n := int64(binary.BigEndian.Uint32(buf[:4]))
			if int64(len(buf)) < recordHeader+n {
				if s.roff+recordHeader+n <= written && len(buf) < int(recordHeader+n) && n > readChunk {
					// A record larger than a chunk: read it whole.
					big := make([]byte, recordHeader+n)
					if _, err := s.rf.ReadAt(big, s.roff); err != nil {
						s.log.Error("ingest spool: read", "segment", seg.path, "err", err)
						return out, data
					}
					buf = big
					continue
				}
				break
			}
			out = append(out, spooled{seg: seg, data: buf[recordHeader : recordHeader+n : recordHeader+n]})
			buf = buf[recordHeader+n:]
			s.roff += recordHeader + n
		}
	}
	s.mu.Lock()
	data := s.data
	s.mu.Unlock()
	return out, data
}

func (s *Spool) indexLocked(id uint64) int {
	for i, x := range s.segs {
		if x.id == id {
			return i
		}
	}
	return -1
}

// done marks records as committed (err nil) and frees segments all of whose
// records are committed; in memory mode it answers their acknowledgements.
func (s *Spool) done(recs []spooled, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	freed := false
	for _, r := range recs {
		if r.ack != nil {
			r.ack <- err
		}
		if err != nil {
			continue
		}
		if r.seg == nil {
			s.memPending--
			s.used -= int64(recordHeader + len(r.data))
			freed = true
			continue
		}
		r.seg.done++
	}
	if s.dir != "" {
		s.freeLocked()
	} else if freed {
		close(s.space)
		s.space = make(chan struct{})
	}
}

// freeLocked deletes the sealed segments whose records are all committed and
// that the reader has left; it reports whether it freed any. s.mu is held.
func (s *Spool) freeLocked() bool {
	freed := false
	kept := s.segs[:0]
	for _, seg := range s.segs {
		if seg.sealed && seg.done == seg.records && seg != s.rseg {
			if err := os.Remove(seg.path); err != nil {
				s.log.Error("ingest spool: remove committed segment", "segment", seg.path, "err", err)
			}
			s.used -= seg.written
			freed = true
			continue
		}
		kept = append(kept, seg)
	}
	s.segs = kept
	if freed {
		close(s.space)
		s.space = make(chan struct{})
	}
	return freed
}

// closeReader closes the reader's file; the reader calls it when it stops.
func (s *Spool) closeReader() {
	if s.rf != nil {
		_ = s.rf.Close()
		s.rf = nil
	}
}

// SpoolStats is the spool's state for /readyz and metrics.
type SpoolStats struct {
	Durable  bool
	Bytes    int64 // on disk (or in memory) and not yet freed
	Budget   int64
	Segments int
	Pending  int64 // records not yet committed
	Broken   string
}

// Stats returns the spool's state.
func (s *Spool) Stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := SpoolStats{Durable: s.dir != "", Bytes: s.used, Budget: s.budget, Segments: len(s.segs)}
	for _, seg := range s.segs {
		st.Pending += seg.records - seg.done
	}
	st.Pending += s.bufRecs + s.memPending
	if s.broken != nil {
		st.Broken = s.broken.Error()
	}
	return st
}

// Close stops accepting, writes and fsyncs what was appended, and closes the
// files. Records not yet committed stay for the next run.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.space)
	s.space = make(chan struct{})
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	<-s.flusherDone
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs {
		if seg.f != nil {
			_ = seg.f.Close()
			seg.f = nil
		}
	}
	for _, r := range s.mem {
		if r.ack != nil {
			r.ack <- errSpoolClosed
		}
	}
	s.mem = nil
	return nil
}
