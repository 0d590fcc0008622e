# Sourced by scripts/venv.sh: system packages the Python dependencies call out to.
# Graphviz's `dot` renders caffe.draw / draw_net.py pictures (pydot only writes dot source).
if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Graphviz (apt-get install graphviz, about 10 MB) for draw_net.py"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz) >/dev/null \
            || echo "[setup] warning: could not install Graphviz; draw_net.py will fail until 'dot' is on PATH"
    else
        echo "[setup] note: Graphviz's 'dot' is not on PATH; install it (e.g. apt-get install graphviz) for draw_net.py"
    fi
fi
