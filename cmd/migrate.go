package cmd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/insighthealth/ehr-operator/receiver/store"
)

type migrateFlags struct {
	databaseURL *secretFlag
	timeout     time.Duration
}

func newMigrateCommand() *cobra.Command {
	var f migrateFlags
	c := &cobra.Command{
		Use:   "migrate",
		Short: "Apply the database migrations and exit",
		Long: `Apply the embedded database migrations and exit.

Safe to run while receivers start: migrations run under a PostgreSQL
advisory lock. Every flag falls back to an environment variable named after
it (--database-url → DATABASE_URL, --database-url-file → DATABASE_URL_FILE).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := BindEnv(c.Flags()); err != nil {
				return err
			}
			return runMigrate(c.Context(), f)
		},
	}
	fs := c.Flags()
	f.databaseURL = addSecretFlag(fs, "database-url", "postgres:// URL of the appointments database", "the database URL")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Minute, "give up after this long (waiting for the migration lock included)")
	return c
}

func runMigrate(ctx context.Context, f migrateFlags) error {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	slog.SetDefault(log)
	dbURL, err := f.databaseURL.get()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	st, err := store.Open(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("while opening the database: %w", err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		return fmt.Errorf("while migrating the database: %w", err)
	}
	if err := st.Ready(ctx); err != nil {
		return fmt.Errorf("after migrating: %w", err)
	}
	log.Info("Database migrations applied")
	return nil
}
