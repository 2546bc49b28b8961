package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/nxcloud/nxcloud/migrations"
	"github.com/nxcloud/nxcloud/tenants"
)

func cmdMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var status *bool
	cfg, err := parseCommand("migrate", args, getenv, stderr, func(fs *flag.FlagSet) {
		status = fs.Bool("status", false, "list migrations and whether each is applied, then exit")
	})
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	pool, err := openPool(ctx, cfg.DatabaseURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	if !*status {
		flavor, err := migrations.Up(ctx, pool, migrations.Options{Timescale: cfg.Timescale, Logger: log})
		if err != nil {
			return err
		}
		templates, err := tenants.Templates()
		if err != nil {
			return err
		}
		if err := tenants.NewService(tenants.DB{System: pool}, templates, 0).LoadSectors(ctx); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "database is up to date (storage: %s)\n", flavor)
	}
	list, err := migrations.List(ctx, pool)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tNAME\tFLAVOR\tAPPLIED")
	for _, m := range list {
		applied := "pending"
		if m.AppliedAt != nil {
			applied = m.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
		}
		fmt.Fprintf(tw, "%04d\t%s\t%s\t%s\n", m.Version, m.Name, m.Flavor, applied)
	}
	return tw.Flush()
}

func cmdTenant(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		fmt.Fprintln(stderr, "usage: nxcloud tenant create --sector magnetic-materials --slug acme-magnets --name 'Acme Magnets Co.' [--owner-email owner@acme.example]")
		return errUsage
	}
	var sector, slug, name, owner *string
	cfg, err := parseCommand("tenant create", args[1:], getenv, stderr, func(fs *flag.FlagSet) {
		sector = fs.String("sector", "", "sector template id (e.g. magnetic-materials)")
		slug = fs.String("slug", "", "tenant slug: lower-case letters, digits, '-' (used in MQTT topics)")
		name = fs.String("name", "", "enterprise name")
		owner = fs.String("owner-email", "", "invite this email to be the enterprise's owner")
	})
	if err != nil {
		return err
	}
	pool, err := openPool(ctx, cfg.DatabaseURL, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}
	if _, err := migrations.Up(ctx, pool, migrations.Options{Timescale: cfg.Timescale, Logger: log}); err != nil {
		return err
	}
	templates, err := tenants.Templates()
	if err != nil {
		return err
	}
	svc := tenants.NewService(tenants.DB{System: pool}, templates, 0)
	if err := svc.LoadSectors(ctx); err != nil {
		return err
	}
	o, err := svc.CreateEnterpriseWithOwner(ctx, tenants.EnterpriseInput{Slug: *slug, Name: *name, Sector: *sector, OwnerEmail: *owner})
	if err != nil {
		return err
	}
	t := o.Tenant
	fmt.Fprintf(stdout, "created enterprise %s (%s) in sector %s, id %s\nAPI key (shown once): %s\n", t.Name, t.Slug, t.SectorID, t.ID, o.APIKey)
	if o.OwnerInvitation != "" {
		fmt.Fprintf(stdout, "owner invitation for %s (shown once, valid %d days): %s\n"+
			"  the owner accepts it with POST /api/v1/auth/accept-invitation {\"token\": \"<invitation>\", \"name\": \"…\", \"password\": \"…\"}\n",
			strings.ToLower(strings.TrimSpace(*owner)), int(tenants.InvitationLifetime.Hours()/24), o.OwnerInvitation)
	}
	return nil
}
