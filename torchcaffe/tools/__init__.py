"""Caffe's command-line tools (`caffe`, `convert_imageset`, ...): the code behind the console scripts."""
