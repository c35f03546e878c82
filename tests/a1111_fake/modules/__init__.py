"""Stand-ins for the AUTOMATIC1111 WebUI (v1.10.1) modules the dreambooth_core adapter uses.

Same module names, attribute names and signatures as the real ones (file:line references
in /work/hosts/NOTES.md), with just enough behaviour to be observed: folders are scanned
for real, a model "loads" when `shared.sd_model` is touched (as the real lazy property
does), and callbacks swallow and record exceptions as the real ones report and swallow
them. `fake_webui.setup()` points everything at a test's folder.
"""
