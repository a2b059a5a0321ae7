package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

// versionLine is what the version command and --version print: the
// program's version, if it has its own, and the version of shadows.
func versionLine(cfg Config) string {
	v := shadowsVersion()
	if cfg.Version == "" {
		return cfg.Name + " " + v
	}
	return fmt.Sprintf("%s %s (shadows %s)", cfg.Name, cfg.Version, v)
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), versionLine(a.cfg))
			return err
		},
	}
}
