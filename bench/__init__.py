"""The callbox benchmark suite: callbox side by side with python-socketio and Node socket.io."""
