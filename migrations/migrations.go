// Package migrations holds nxcloud's embedded, forward-only SQL migrations and
// the runner that applies them.
//
// Files are named NNNN_name.sql. A migration that differs by storage flavor
// comes as a pair, NNNN_name.tsdb.sql (TimescaleDB) and NNNN_name.pg.sql (plain
// PostgreSQL); the runner picks the flavor once, on the first run, from whether
// the timescaledb extension can be created, and records it, so later runs
// follow the same path.
package migrations

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed sql/*.sql
var files embed.FS

// Storage flavors.
const (
	FlavorTimescale = "tsdb"
	FlavorPostgres  = "pg"
)

// Migration is one version of the schema.
type Migration struct {
	Version int
	Name    string
	// SQL per flavor; "" holds the SQL shared by both flavors.
	SQL map[string]string
}

// Status describes one migration as applied, or not, in a database.
type Status struct {
	Version   int
	Name      string
	Flavor    string
	Checksum  string
	AppliedAt *time.Time
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, "sql")
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		name := e.Name()
		base := strings.TrimSuffix(name, ".sql")
		flavor := ""
		switch {
		case strings.HasSuffix(base, ".tsdb"):
			flavor, base = FlavorTimescale, strings.TrimSuffix(base, ".tsdb")
		case strings.HasSuffix(base, ".pg"):
			flavor, base = FlavorPostgres, strings.TrimSuffix(base, ".pg")
		}
		num, label, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s: want NNNN_name.sql", name)
		}
		body, err := files.ReadFile(path.Join("sql", name))
		if err != nil {
			return nil, err
		}
		m := byVersion[v]
		if m == nil {
			m = &Migration{Version: v, Name: label, SQL: map[string]string{}}
			byVersion[v] = m
		}
		if m.Name != label {
			return nil, fmt.Errorf("migration %d has two names: %s and %s", v, m.Name, label)
		}
		m.SQL[flavor] = string(body)
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		_, shared := m.SQL[""]
		_, ts := m.SQL[FlavorTimescale]
		_, pg := m.SQL[FlavorPostgres]
		if shared == (ts || pg) || ts != pg {
			return nil, fmt.Errorf("migration %d: want either NNNN_name.sql or both .tsdb.sql and .pg.sql", m.Version)
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration versions must be 1..n without gaps; %d is missing", i+1)
		}
	}
	return out, nil
}

// sqlFor returns the SQL of m for flavor and whether it is flavor-specific.
func (m Migration) sqlFor(flavor string) (string, bool) {
	if s, ok := m.SQL[""]; ok {
		return s, false
	}
	return m.SQL[flavor], true
}

func checksum(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// lockKey is the advisory lock that serialises migration runs across processes.
const lockKey = 7_311_420_001

// Options tune Up.
type Options struct {
	// Timescale is "auto" (default: use TimescaleDB when the extension can be
	// created), "on" (require it) or "off" (plain PostgreSQL).
	Timescale string
	Logger    *slog.Logger
}

// Up applies every pending migration, each in its own transaction, holding an
// advisory lock so concurrent runs (replicas starting together, parallel test
// packages) apply each version once. It returns the storage flavor in use.
func Up(ctx context.Context, pool *pgxpool.Pool, opt Options) (string, error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	all, err := All()
	if err != nil {
		return "", err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return "", fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
		return "", fmt.Errorf("migrate: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockKey) //nolint:errcheck

	var version int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int`).Scan(&version); err != nil {
		return "", fmt.Errorf("migrate: server version: %w", err)
	}
	if version < 140000 {
		return "", fmt.Errorf("migrate: PostgreSQL %d.%d is too old: nxcloud needs PostgreSQL 14 or later (date_bin)", version/10000, version%10000)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		flavor     text NOT NULL DEFAULT '',
		checksum   text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return "", fmt.Errorf("migrate: version table: %w", err)
	}
	applied, err := appliedMigrations(ctx, conn.Conn())
	if err != nil {
		return "", err
	}
	flavor, err := chooseFlavor(ctx, conn.Conn(), applied, opt.Timescale)
	if err != nil {
		return "", err
	}
	for _, m := range all {
		body, specific := m.sqlFor(flavor)
		if st, ok := applied[m.Version]; ok {
			if st.Checksum != checksum(body) {
				log.Warn("applied migration differs from the embedded one; migrations are never edited once landed",
					"version", m.Version, "name", m.Name)
			}
			continue
		}
		start := time.Now()
		tag := ""
		if specific {
			tag = flavor
		}
		err := pgx.BeginFunc(ctx, conn.Conn(), func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, body); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name, flavor, checksum) VALUES ($1, $2, $3, $4)`,
				m.Version, m.Name, tag, checksum(body))
			return err
		})
		if err != nil {
			return "", fmt.Errorf("migrate: %04d_%s (%s): %w", m.Version, m.Name, flavor, err)
		}
		log.Info("migration applied", "version", m.Version, "name", m.Name, "flavor", flavor,
			"took", time.Since(start).Round(time.Millisecond))
	}
	return flavor, nil
}

func appliedMigrations(ctx context.Context, conn *pgx.Conn) (map[int]Status, error) {
	rows, err := conn.Query(ctx, `SELECT version, name, flavor, checksum, applied_at FROM schema_migrations`)
	if err != nil {
		return nil, fmt.Errorf("migrate: read versions: %w", err)
	}
	defer rows.Close()
	out := map[int]Status{}
	for rows.Next() {
		var s Status
		var at time.Time
		if err := rows.Scan(&s.Version, &s.Name, &s.Flavor, &s.Checksum, &at); err != nil {
			return nil, err
		}
		s.AppliedAt = &at
		out[s.Version] = s
	}
	return out, rows.Err()
}

func chooseFlavor(ctx context.Context, conn *pgx.Conn, applied map[int]Status, want string) (string, error) {
	for _, s := range applied {
		if s.Flavor != "" {
			if (want == "on" && s.Flavor != FlavorTimescale) || (want == "off" && s.Flavor != FlavorPostgres) {
				return "", fmt.Errorf("migrate: this database was set up with storage flavor %q; --timescaledb=%s cannot change it", s.Flavor, want)
			}
			return s.Flavor, nil
		}
	}
	switch want {
	case "off":
		return FlavorPostgres, nil
	case "", "auto", "on":
	default:
		return "", fmt.Errorf("migrate: timescaledb must be auto, on or off, not %q", want)
	}
	ok, err := TimescaleAvailable(ctx, conn)
	if err != nil {
		return "", err
	}
	if ok {
		return FlavorTimescale, nil
	}
	if want == "on" {
		return "", errors.New("migrate: TimescaleDB was required (--timescaledb=on) but the extension is not available: " +
			"install it and add timescaledb to shared_preload_libraries")
	}
	return FlavorPostgres, nil
}

// TimescaleAvailable reports whether the timescaledb extension is installed or
// can be created: its files are present and the library is preloaded.
func TimescaleAvailable(ctx context.Context, conn interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
		OR (EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')
		    AND current_setting('shared_preload_libraries') LIKE '%timescaledb%')`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("migrate: detect timescaledb: %w", err)
	}
	return ok, nil
}

// Flavor returns the storage flavor a migrated database uses.
func Flavor(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var f string
	err := pool.QueryRow(ctx, `SELECT flavor FROM schema_migrations WHERE flavor <> '' ORDER BY version LIMIT 1`).Scan(&f)
	if err != nil {
		return "", fmt.Errorf("storage flavor (is the database migrated? run nxcloud migrate): %w", err)
	}
	return f, nil
}

// List returns every embedded migration with its state in the database.
func List(ctx context.Context, pool *pgxpool.Pool) ([]Status, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	applied := map[int]Status{}
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return nil, err
	}
	if exists {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		applied, err = appliedMigrations(ctx, conn.Conn())
		conn.Release()
		if err != nil {
			return nil, err
		}
	}
	out := make([]Status, 0, len(all))
	for _, m := range all {
		if st, ok := applied[m.Version]; ok {
			out = append(out, st)
			continue
		}
		out = append(out, Status{Version: m.Version, Name: m.Name})
	}
	return out, nil
}
