#!/bin/sh
# Installs easel for the current user, no root needed, from the unpacked release tarball this
# script sits in (or --from DIR):
#
#   PREFIX/bin/                         easel, easeld (easel-tray when the release has it)
#   PREFIX/lib/easel/                   the ONNX Runtime library the daemon loads
#   PREFIX/share/bash-completion/completions, share/zsh/site-functions,
#   PREFIX/share/fish/vendor_completions.d   shell completions
#   PREFIX/share/man/man1/              man pages
#   PREFIX/share/doc/easel/             README.md and the licences
#   PREFIX/share/easel/                 this script and install-manifest (what was installed,
#                                       for --uninstall)
#   ${XDG_CONFIG_HOME:-~/.config}/systemd/user/   easeld.socket, easeld.service,
#                                       easel-gateway.service (Linux)
#   ~/Library/LaunchAgents/org.easel.easeld.plist (macOS)
#
# PREFIX is ~/.local unless --prefix says otherwise. --uninstall removes exactly the files the
# manifest lists, and the folders the install created once they are empty.
#
# The whole script is one function called on its last line: a download cut short defines
# nothing and runs nothing.

usage() {
    cat <<'USAGE'
usage: install.sh [--prefix DIR] [--from DIR] [--uninstall]

  --prefix DIR   install under DIR (default: ~/.local): DIR/bin, DIR/lib/easel, DIR/share
  --from DIR     the unpacked easel release to install (default: the folder of this script)
  --uninstall    remove what an earlier install into the same prefix put there
USAGE
}

main() {
    set -eu
    umask 022

    prefix=""
    from=""
    action=install
    while [ $# -gt 0 ]; do
        case "$1" in
            --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; prefix=$2; shift 2 ;;
            --prefix=*) prefix=${1#--prefix=}; shift ;;
            --from) [ $# -ge 2 ] || die "--from needs a folder"; from=$2; shift 2 ;;
            --from=*) from=${1#--from=}; shift ;;
            --uninstall) action=uninstall; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown option \`$1'" ;;
        esac
    done

    [ -n "${HOME:-}" ] || die "HOME is not set; set it to your home folder"
    default_prefix=$HOME/.local
    prefix=${prefix:-$default_prefix}
    case "$prefix" in
        /*) ;;
        *) prefix=$(pwd)/$prefix ;;
    esac
    prefix=${prefix%/}
    case "$prefix" in
        *[[:space:]]*) die "the prefix \`$prefix' holds a space, which the systemd units cannot name; choose another" ;;
    esac
    prefix_flag=""
    [ "$prefix" = "$default_prefix" ] || prefix_flag=" --prefix $prefix"
    unit_dir=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user
    agent_dir=$HOME/Library/LaunchAgents
    manifest=$prefix/share/easel/install-manifest
    os=$(uname -s)

    case "$action" in
        install)
            if [ -z "$from" ]; then
                from=$(cd "$(dirname "$0")" && pwd)
            fi
            install_release
            ;;
        uninstall) uninstall ;;
    esac
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*"
}

install_release() {
    [ -f "$from/bin/easel" ] && [ -f "$from/bin/easeld" ] ||
        die "$from is not an unpacked easel release (no bin/easel and bin/easeld); run the install.sh inside the unpacked tarball, or pass --from DIR"
    if [ -f "$manifest" ]; then
        say "replacing the easel installed in $prefix"
        uninstall_quietly=1 uninstall
    fi

    # Recorded as it goes, moved beside the files at the end.
    new_manifest=$(mktemp "${TMPDIR:-/tmp}/easel-manifest.XXXXXX")
    trap 'rm -f "$new_manifest"' EXIT
    ensure_dir "$prefix/share/easel"
    # Kept for --uninstall later; the one running now if the release folder has none.
    script=$from/install.sh
    [ -f "$script" ] || script=$0
    put "$script" "$prefix/share/easel/install.sh" 755

    for file in "$from"/bin/*; do
        [ -f "$file" ] || continue
        put "$file" "$prefix/bin/$(basename "$file")" 755
    done
    for file in "$from"/lib/easel/*; do
        [ -f "$file" ] || continue
        put "$file" "$prefix/lib/easel/$(basename "$file")" 644
    done
    if [ -d "$from/share" ]; then
        # Completions, man pages and anything else laid out as under the prefix.
        (cd "$from" && find share -type f) | while IFS= read -r file; do
            put "$from/$file" "$prefix/$file" 644
        done
    fi
    for file in README.md LICENSE-MIT LICENSE-APACHE; do
        if [ -f "$from/$file" ]; then
            put "$from/$file" "$prefix/share/doc/easel/$file" 644
        fi
    done

    case "$os" in
        Linux)
            for unit in "$from"/systemd/*.socket "$from"/systemd/*.service; do
                [ -f "$unit" ] || continue
                put_rewritten "$unit" "$unit_dir/$(basename "$unit")"
            done
            ;;
        Darwin)
            for agent in "$from"/macos/*.plist; do
                [ -f "$agent" ] || continue
                put_rewritten "$agent" "$agent_dir/$(basename "$agent")"
            done
            ;;
    esac

    cat "$new_manifest" >"$manifest.partial"
    echo "f $manifest" >>"$manifest.partial"
    mv "$manifest.partial" "$manifest"
    rm -f "$new_manifest"

    if [ "$os" = Linux ] && user_systemd; then
        systemctl --user daemon-reload || true
    fi
    say "installed easel into $prefix"
    case ":${PATH:-}:" in
        *":$prefix/bin:"*) ;;
        *) say "add $prefix/bin to your PATH (e.g. in ~/.profile: export PATH=\"$prefix/bin:\$PATH\")" ;;
    esac
    case "$os" in
        Linux) say "start the daemon on first use: systemctl --user enable --now easeld.socket" ;;
        Darwin) say "start the daemon at login: launchctl bootstrap gui/\$(id -u) $agent_dir/org.easel.easeld.plist" ;;
    esac
    say "remove it again with: sh $prefix/share/easel/install.sh --uninstall$prefix_flag"
}

# Creates a folder and its missing parents, recording each one created (parents first).
ensure_dir() {
    [ -d "$1" ] && return 0
    ensure_dir "$(dirname "$1")"
    mkdir "$1"
    echo "d $1" >>"$new_manifest"
}

# Copies a file into place through a temporary name (a reader never sees half a binary).
put() {
    ensure_dir "$(dirname "$2")"
    cp "$1" "$2.easel-partial"
    chmod "$3" "$2.easel-partial"
    mv -f "$2.easel-partial" "$2"
    echo "f $2" >>"$new_manifest"
}

# A unit or agent whose paths name the default prefix, rewritten for this one.
put_rewritten() {
    ensure_dir "$(dirname "$2")"
    if [ "$prefix" = "$default_prefix" ]; then
        cp "$1" "$2.easel-partial"
    else
        escaped=$(printf '%s\n' "$prefix" | sed 's/[\\|&]/\\&/g')
        sed -e "s|%h/\.local/|$escaped/|g" -e "s|\$HOME/\.local/|$escaped/|g" "$1" >"$2.easel-partial"
    fi
    chmod 644 "$2.easel-partial"
    mv -f "$2.easel-partial" "$2"
    echo "f $2" >>"$new_manifest"
}

# Whether a user service manager answers (not in containers, CI or a bare ssh session).
user_systemd() {
    command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1
}

uninstall() {
    [ -f "$manifest" ] ||
        die "no easel installation in $prefix (no $manifest); pass the --prefix it was installed with"
    # Read first: the manifest lists itself.
    entries=$(cat "$manifest")
    if [ "$os" = Linux ] && user_systemd; then
        # Enabling made links outside the manifest (sockets.target.wants/…): disable removes them.
        for unit in $(printf '%s\n' "$entries" | sed -n 's|^f .*/systemd/user/\([^/]*\)$|\1|p'); do
            systemctl --user disable --now "$unit" >/dev/null 2>&1 || true
        done
    fi
    printf '%s\n' "$entries" | sed -n 's/^f //p' | while IFS= read -r file; do
        rm -f "$file"
    done
    # Deepest first; a folder that holds something else stays.
    printf '%s\n' "$entries" | sed -n 's/^d //p' | sort -r | while IFS= read -r dir; do
        rmdir "$dir" 2>/dev/null || true
    done
    if [ "$os" = Linux ] && user_systemd; then
        systemctl --user daemon-reload || true
    fi
    [ -n "${uninstall_quietly:-}" ] || say "removed easel from $prefix"
}

main "$@"
